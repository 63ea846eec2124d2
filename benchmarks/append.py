"""append: events/s the store records request outcomes in its real mode, next to one INSERT per
event in a transaction of its own over the same table.

The real mode is the worker's group commit: worker/recorder.py's Recorder, fed ~1 KB
request_succeeded events (a chat completion body, one attempt, usage) for a running batch
whose chunks it holds leases on. Each flush is one transaction: the batch's view row locked,
the chunk leases checked, up to FLUSH_MAX outcomes appended by store.append_outcomes, the view
updated once. Outcomes are all handed over at once, so the figure is the store's capacity, not
a drain's pace. For context, the same group commit written out directly (lock, append_outcomes,
fold, save the view; 1,000 events per transaction, no leases) is measured too.

The peer inserts each event alone (autocommit: one commit, one WAL flush per event) on one
connection, into the same `events` table with the same rows; it updates no view.

    python -m benchmarks.append [--events 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

import asyncpg
import msgspec

from eventbatch import batch as domain
from eventbatch import batches, db, events as ev, files, ids, projections, store
from eventbatch.worker.recorder import FLUSH_MAX, HeldChunk, Recorder

MODEL = "gpt-4o-mini"
CHUNK_SIZE = 256
_WORDS = ("the a of to and in is for that with on as it this be are by at from answer refund order "
          "customer ticket summary issue account request invoice shipping").split()


def realistic_outcome(index: int, rnd: random.Random) -> ev.RequestSucceeded:
    """A request_succeeded event of ~1 KB encoded, shaped as the worker records a chat completion."""
    prompt, completion = rnd.randint(200, 600), rnd.randint(40, 120)
    content = " ".join(rnd.choices(_WORDS, k=50))
    body = {"id": f"chatcmpl-{rnd.getrandbits(116):029x}", "object": "chat.completion", "created": 1_760_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None,
                                                 "annotations": []},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                    "accepted_prediction_tokens": 0,
                                                    "rejected_prediction_tokens": 0}},
            "service_tier": "default", "system_fingerprint": "fp_560af6e559"}
    return ev.RequestSucceeded(
        index=index, custom_id=f"request-{index:06d}", status_code=200, body=msgspec.Raw(msgspec.json.encode(body)),
        attempts=[ev.Attempt(at=1_760_000_000.0 + index / 1000, duration_ms=rnd.randint(300, 3000), status_code=200)],
        request_id=f"req_{rnd.getrandbits(128):032x}",
        usage=ev.Usage(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion))


def outcomes(n: int, seed: int = 1) -> list[ev.RequestSucceeded]:
    rnd = random.Random(seed)
    return [realistic_outcome(i, rnd) for i in range(n)]


async def running_batch(conn: asyncpg.Connection, total: int, project: str = "bench") -> domain.BatchState:
    """A batch created, validated and started through the commands, its `total` requests in
    chunks of CHUNK_SIZE enqueued (the input file is recorded but holds no bytes: nothing
    reads it, nothing runs the requests)."""
    f = await files.record_upload(conn, file_id=ids.file_id(), project=project, filename="benchmark.jsonl",
                                     purpose="batch", size=0, expires_after=None)
    state = await batches.create_batch(
        conn, project=project, input_file_id=f.id, endpoint="/v1/chat/completions",
        completion_window="24h", metadata=None, output_expires_after=None, window_seconds=86400)
    now = time.time()
    plan = [ev.ChunkPlan(i, min(CHUNK_SIZE, total - i), 0, 0) for i in range(0, total, CHUNK_SIZE)]
    state, _ = await batches.transition(conn, state.id, lambda s: [
        ev.BatchValidated(total=total, model=MODEL, chunks=plan, at=now), ev.BatchStarted(at=now)])
    return state


CLAIM_ALL = """
UPDATE work_chunks SET lease_owner = $1, lease_epoch = lease_epoch + 1, lease_expires_at = now() + interval '1 hour'
WHERE batch_id = $2
RETURNING batch_id, chunk_no, first_index, count, byte_start, byte_end, lease_epoch
"""

INSERT_ONE = """
INSERT INTO events (stream, version, type, data, batch_id, request_index) VALUES ($1, 1, $2, $3, $4, $5)
"""


async def _check(conn: asyncpg.Connection, batch_id: str, n: int, with_view: bool) -> None:
    got = await conn.fetchval("SELECT count(*) FROM events WHERE batch_id = $1 AND request_index IS NOT NULL",
                              batch_id)
    if got != n:
        raise RuntimeError(f"{got} outcome events recorded for batch {batch_id}, {n} expected")
    if with_view:
        state = await projections.get_batch(conn, batch_id)
        if state.request_counts.completed != n:
            raise RuntimeError(f"batch view counts {state.request_counts}, {n} completed expected")


async def recorder_rate(pool: asyncpg.Pool, events: list[ev.RequestSucceeded]) -> float:
    """Events/s through the worker's Recorder (group commit), from the first outcome handed over
    until the last one is committed."""
    owner = f"benchmark:{os.getpid()}"
    async with pool.acquire() as conn:
        state = await running_batch(conn, len(events))
        chunks = sorted((HeldChunk(r) for r in await conn.fetch(CLAIM_ALL, owner, state.id)),
                        key=lambda c: c.first_index)
    for c in chunks:
        c.remaining = c.count
    recorder = Recorder(pool, owner, on_batch_done=lambda batch_id: None, on_chunk_finished=lambda chunk: None)
    task = asyncio.create_task(recorder.run())
    try:
        t0 = time.perf_counter()
        for o in events:
            recorder.add(chunks[o.index // CHUNK_SIZE], o)
        await recorder.drain()
        elapsed = time.perf_counter() - t0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    async with pool.acquire() as conn:
        await _check(conn, state.id, len(events), with_view=True)
    return len(events) / elapsed


async def group_commit_rate(pool: asyncpg.Pool, events: list[ev.RequestSucceeded],
                            per_transaction: int = 1000) -> float:
    """Events/s of the group commit written out: lock the view row, append_outcomes, fold, save."""
    async with pool.acquire() as conn:
        state = await running_batch(conn, len(events))
        t0 = time.perf_counter()
        for i in range(0, len(events), per_transaction):
            group = events[i:i + per_transaction]
            async with conn.transaction():
                state = await projections.lock_batch(conn, state.id)
                recorded = await store.append_outcomes(conn, state.id, group)
                state = domain.fold(state, [o for o in group if o.index in recorded])
                await projections.save_batch(conn, state)
        elapsed = time.perf_counter() - t0
        await _check(conn, state.id, len(events), with_view=True)
    return len(events) / elapsed


async def one_insert_per_event_rate(pool: asyncpg.Pool, events: list[ev.RequestSucceeded]) -> float:
    """The peer: each event INSERTed in a transaction of its own, one after the other."""
    async with pool.acquire() as conn:
        state = await running_batch(conn, len(events))
        stream = store.batch_stream(state.id)
        t0 = time.perf_counter()
        for o in events:
            await conn.execute(INSERT_ONE, f"{stream}/{o.index}", ev.type_tag(o), ev.encode(o), state.id, o.index)
        elapsed = time.perf_counter() - t0
        await _check(conn, state.id, len(events), with_view=False)
    return len(events) / elapsed


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


async def measure(database_url: str, n: int, peer_n: int, rounds: int) -> dict:
    events = outcomes(n)
    peer_events = events[:peer_n]
    pool = await db.create_pool(database_url, min_size=2, max_size=4)
    try:
        real, direct, peer = [], [], []
        for _ in range(rounds):            # alternating, so all see the same noise
            real.append(await recorder_rate(pool, events))
            peer.append(await one_insert_per_event_rate(pool, peer_events))
            direct.append(await group_commit_rate(pool, events))
        sizes = [len(ev.encode(e)) for e in events[:1000]]
    finally:
        await pool.close()
    return {"real": real, "direct": direct, "peer": peer, "event_bytes": sum(sizes) / len(sizes)}


def run(quick: bool, full: bool, ctx) -> dict:
    n, peer_n = (10_000, 1_000) if quick else (50_000, 5_000)
    rounds = 1 if quick else 5 if full else 3
    m = asyncio.run(measure(ctx.fresh_database("append"), n, peer_n, rounds))
    real, direct, peer = _median(m["real"]), _median(m["direct"]), _median(m["peer"])
    ratio = real / peer
    return {
        "name": "append",
        "figures": {
            "events_per_round": n, "peer_events_per_round": peer_n, "rounds": rounds,
            "event_bytes": round(m["event_bytes"]), "flush_max": FLUSH_MAX,
            "recorder_events_per_s": round(real), "group_commit_events_per_s": round(direct),
            "one_insert_per_event_events_per_s": round(peer), "ratio": round(ratio, 1),
            "recorder_all": [round(x) for x in m["real"]], "group_commit_all": [round(x) for x in m["direct"]],
            "one_insert_per_event_all": [round(x) for x in m["peer"]],
        },
        "rows": [
            {"figure": "events/s (Recorder group commit)", "eventbatch": real, "peer": peer, "ratio": ratio,
             "target": "≥ 50,000 events/s", "met": real >= 50_000},
            {"figure": "events/s (group commit, direct)", "eventbatch": direct, "peer": peer,
             "ratio": direct / peer, "target": "", "met": None},
        ],
        "targets": [{"target": "≥ 50,000 events/s", "value": round(real), "met": real >= 50_000}],
        "notes": (f"~{m['event_bytes']:.0f}-byte request_succeeded events, {n:,} per round through the worker's "
                  f"Recorder (≤ {FLUSH_MAX} per transaction, batch view row locked, leases checked, view "
                  f"updated once per flush); peer: one INSERT per event, autocommit, one connection, "
                  f"{peer_n:,} per round. Median of {rounds} alternating rounds; synchronous_commit on."),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.append")
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args(argv)
    from .context import Context
    with tempfile.TemporaryDirectory() as t:
        ctx = Context(Path(t))
        try:
            m = asyncio.run(measure(ctx.fresh_database("append"), a.events, max(a.events // 10, 1), a.rounds))
        finally:
            ctx.close()
    print({k: [round(x) for x in v] if isinstance(v, list) else v for k, v in m.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
