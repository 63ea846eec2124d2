"""rebuild: `eventbatch projections rebuild` (rebuild.rebuild) over a log of 1,000,000+
events, next to a pure-SQL aggregate of the same table (the floor: Postgres reading every event
and summing the same figures, with nothing decoded in Python and no view written).

The log is written by the real store: 20 batches created, validated and started through the
commands, 50,000 ~1 KB request outcomes each (1 in 100 a request_failed with an upstream 400)
appended by store.append_outcomes in transactions of 10,000 with the batch view row locked and
updated, then finalizing and completed. Before the measured rounds one sequential read of the
table warms the cache for both contenders; rounds alternate.

    python -m benchmarks.rebuild [--batches 20] [--per-batch 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import asyncpg
import msgspec

from eventbatch import batch as domain
from eventbatch import events as ev, projections, rebuild, store

from .append import realistic_outcome, running_batch

PER_TRANSACTION = 10_000

# What the views hold, summed in SQL: per batch, completed and failed requests and token usage
# (from the outcome's summary, which the rebuild reads too, migrations/060; from the event for
# older rows).
FLOOR = """
SELECT batch_id,
       count(*) FILTER (WHERE type = 'request_succeeded') AS completed,
       count(*) FILTER (WHERE type = 'request_failed') AS failed,
       coalesce(sum((u ->> 'input_tokens')::bigint), 0) AS input_tokens,
       coalesce(sum((u ->> 'cached_tokens')::bigint), 0) AS cached_tokens,
       coalesce(sum((u ->> 'output_tokens')::bigint), 0) AS output_tokens,
       coalesce(sum((u ->> 'reasoning_tokens')::bigint), 0) AS reasoning_tokens,
       coalesce(sum((u ->> 'total_tokens')::bigint), 0) AS total_tokens,
       count(*) AS events
FROM (SELECT batch_id, type,
             CASE WHEN type = 'request_succeeded'
                  THEN coalesce(convert_from(summary, 'UTF8')::jsonb -> 1, convert_from(data, 'UTF8')::jsonb) -> 'usage'
             END AS u
      FROM events) e
GROUP BY batch_id
"""


class OutcomeSource:
    """Outcome events for any request index, cheaply: a thousand realistic ones, re-indexed."""

    def __init__(self, seed: int = 3):
        rnd = random.Random(seed)
        self._templates = [realistic_outcome(i, rnd) for i in range(1000)]
        self._failed_body = msgspec.Raw(msgspec.json.encode({"error": {
            "message": "This model's maximum context length is 128000 tokens. However, your messages resulted "
                       "in 131072 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}))

    def outcome(self, index: int) -> ev.RequestSucceeded | ev.RequestFailed:
        t = self._templates[index % 1000]
        if index % 100 == 99:
            return ev.RequestFailed(index=index, custom_id=f"request-{index:06d}", status_code=400,
                                    body=self._failed_body, request_id=t.request_id,
                                    attempts=[ev.Attempt(at=t.attempts[0].at, duration_ms=212, status_code=400)])
        return msgspec.structs.replace(t, index=index, custom_id=f"request-{index:06d}")


async def write_batch(conn: asyncpg.Connection, source: OutcomeSource, per_batch: int) -> None:
    state = await running_batch(conn, per_batch)
    for start in range(0, per_batch, PER_TRANSACTION):
        group = [source.outcome(i) for i in range(start, min(start + PER_TRANSACTION, per_batch))]
        async with conn.transaction():
            state = await projections.lock_batch(conn, state.id)
            recorded = await store.append_outcomes(conn, state.id, group)
            state = domain.fold(state, [o for o in group if o.index in recorded])
            await projections.save_batch(conn, state)
    for closing in (ev.BatchFinalizing(at=time.time()), ev.BatchCompleted(at=time.time())):
        async with conn.transaction():
            state = await projections.lock_batch(conn, state.id)
            await store.append(conn, store.batch_stream(state.id), state.version, [closing], batch_id=state.id)
            state = domain.evolve(state, closing)
            await projections.save_batch(conn, state)


async def write_log(database_url: str, batches: int, per_batch: int, writers: int = 2) -> float:
    """Write the log with `writers` connections at once; returns the seconds it took."""
    source = OutcomeSource()
    todo = list(range(batches))
    t0 = time.perf_counter()

    async def writer() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            while todo:
                todo.pop()
                await write_batch(conn, source, per_batch)
        finally:
            await conn.close()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return time.perf_counter() - t0


async def rebuild_once(pool: asyncpg.Pool) -> tuple[float, rebuild.Rebuilt]:
    t0 = time.perf_counter()
    done = await rebuild.rebuild(pool)
    return time.perf_counter() - t0, done


async def floor_once(conn: asyncpg.Connection) -> tuple[float, dict]:
    t0 = time.perf_counter()
    rows = await conn.fetch(FLOOR)
    return time.perf_counter() - t0, {r["batch_id"]: r for r in rows}


async def _check(conn: asyncpg.Connection, done: rebuild.Rebuilt, floor: dict, events: int) -> None:
    """The rebuilt views and the SQL aggregate must agree with each other and with the log."""
    if done.events != events:
        raise RuntimeError(f"rebuild folded {done.events} events; the log holds {events}")
    for (doc,) in await conn.fetch("SELECT doc FROM batch_view"):
        state = projections.decode_batch(doc)
        row = floor[state.id]
        got = (state.status, state.request_counts.completed, state.request_counts.failed, state.usage.input_tokens,
               state.usage.output_tokens, state.usage.total_tokens)
        want = ("completed", row["completed"], row["failed"], row["input_tokens"], row["output_tokens"],
                row["total_tokens"])
        if got != want:
            raise RuntimeError(f"batch {state.id}: rebuilt view {got} but the log sums to {want}")


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


async def measure(database_url: str, batches: int, per_batch: int, rounds: int) -> dict:
    write_seconds = await write_log(database_url, batches, per_batch)
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=2)
    try:
        async with pool.acquire() as conn:
            events = await conn.fetchval("SELECT count(*) FROM events")
            table_mb = await conn.fetchval("SELECT pg_total_relation_size('events')") / 1e6
            await conn.fetchval("SELECT sum(length(data)) FROM events")     # warm the cache for both
        rebuilds, floors = [], []
        for _ in range(rounds):
            seconds, done = await rebuild_once(pool)
            rebuilds.append(seconds)
            async with pool.acquire() as conn:
                seconds, floor = await floor_once(conn)
                floors.append(seconds)
                await _check(conn, done, floor, events)
        async with pool.acquire() as conn:
            diffs = (await rebuild.verify(conn))[1] if events <= 200_000 else []
        if diffs:
            raise RuntimeError("rebuilt views differ from a fresh fold: " + "; ".join(diffs[:5]))
    finally:
        await pool.close()
    return {"events": events, "table_mb": table_mb, "write_seconds": write_seconds,
            "rebuild": rebuilds, "floor": floors}


def run(quick: bool, full: bool, ctx) -> dict:
    batches, per_batch = (4, 25_000) if quick else (20, 50_000)
    rounds = 1 if quick else 3 if full else 2
    m = asyncio.run(measure(ctx.fresh_database("rebuild"), batches, per_batch, rounds))
    n = m["events"]
    rebuild_s, floor_s = _median(m["rebuild"]), _median(m["floor"])
    ratio = rebuild_s / floor_s
    return {
        "name": "rebuild",
        "figures": {
            "events": n, "batches": batches, "table_mb": round(m["table_mb"]), "rounds": rounds,
            "log_written_events_per_s": round(n / m["write_seconds"]),
            "rebuild_seconds": round(rebuild_s, 2), "rebuild_events_per_s": round(n / rebuild_s),
            "floor_seconds": round(floor_s, 2), "floor_events_per_s": round(n / floor_s),
            "rebuild_over_floor": round(ratio, 2),
            "rebuild_all_seconds": [round(x, 2) for x in m["rebuild"]],
            "floor_all_seconds": [round(x, 2) for x in m["floor"]],
        },
        "rows": [{"figure": "events/s (peer: SQL aggregate)", "eventbatch": n / rebuild_s, "peer": n / floor_s,
                  "ratio": floor_s / rebuild_s, "target": "ratio ≥ 0.33× (time ≤ 3× the floor's)",
                  "met": ratio <= 3}],
        "targets": [{"target": "rebuild ≤ 3× the pure-SQL aggregate's time", "value": round(ratio, 2),
                     "met": ratio <= 3}],
        "notes": (f"{n:,} events ({batches} batches × {per_batch:,} outcomes, {m['table_mb']:.0f} MB table) "
                  f"written by store.append_outcomes; rebuild.rebuild (fold into shadow tables, catch-up, "
                  f"swap under a short lock) vs one GROUP BY that parses every outcome's usage (from its "
                  f"summary, as the fold reads it) in Postgres; median of {rounds} alternating rounds on a warm "
                  f"cache; results cross-checked."),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rebuild")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--per-batch", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args(argv)
    from eventbatch import log
    from .context import Context
    log.configure("console", level=30)
    with tempfile.TemporaryDirectory() as t:
        ctx = Context(Path(t))
        try:
            m = asyncio.run(measure(ctx.fresh_database("rebuild"), a.batches, a.per_batch, a.rounds))
        finally:
            ctx.close()
    print(m)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
