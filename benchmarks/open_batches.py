"""open_batches: many small batches open at once (SPEC §11: due work and claims cost what is due
and what runs, not what is open). 2,000 open 5-request batches of 20 projects at 1 s upstream
latency, next to 200 of them: the time to complete them all, GET /v1/batches/{id} p99 while
they run (target ≤ 20 ms), and the statements per second the sweeper of due work and the claimer
send (from /metrics: eventbatch_due_statements_total, eventbatch_claim_statements_total) over
the same window of the run at 200 and at 2,000 open batches (target: flat, the 2,000 figure
within 1.5× of the 200 one: both run at the same request rate, so what differs is only the
number of open batches that are not due).

`eventbatch serve` at concurrency 100 against `eventbatch mock-upstream` at 1,000 ms, loopback
only; the batches are created through the API (20 projects' keys, 16 at a time), then the
window starts once all are in progress.

    python -m benchmarks.open_batches [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import time

import aiohttp

from .processes import Processes
from .read_latency import percentile

LATENCY_MS = 1000
CONCURRENCY = 100
PROJECTS = 20
REQUESTS = 5
WINDOW = 5.0           # seconds of the run measured at each size
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _lines(tag: str) -> bytes:
    return b"".join(json.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "gpt-4o-mini", "max_tokens": 16,
                                         "messages": [{"role": "user", "content": f"question {i}"}]}}).encode()
                    + b"\n" for i in range(REQUESTS))


async def _create(session: aiohttp.ClientSession, api_url: str, key: str, tag: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", _lines(tag), filename=f"{tag}.jsonl", content_type="application/jsonl")
    async with session.post(f"{api_url}/files", data=form, headers=headers) as r:
        file_id = (await r.json())["id"]
    async with session.post(f"{api_url}/batches", headers=headers,
                            json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                  "completion_window": "24h"}) as r:
        return (await r.json())["id"]


def _counter(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def _metrics(session: aiohttp.ClientSession, root: str) -> tuple[float, float, float]:
    """Statements of the sweeper, claims, and batches open (every status but the terminal ones)."""
    async with session.get(f"{root}/metrics") as r:
        text = await r.text()
    open_ = sum(float(v) for s, v in re.findall(r'^eventbatch_batches\{status="([a-z_]+)"\} ([0-9.]+)$', text, re.M)
                if s not in TERMINAL)
    return (_counter(text, "eventbatch_due_statements_total"), _counter(text, "eventbatch_claim_statements_total"),
            open_)


async def _status(session, api_url: str, key: str, batch_id: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    async with session.get(f"{api_url}/batches/{batch_id}", headers={"Authorization": f"Bearer {key}"}) as r:
        body = await r.json()
    return (time.perf_counter() - t0) * 1000, body["status"]


async def _measure(api_url: str, keys: list[str], n: int) -> dict:
    root = api_url.removesuffix("/v1")
    async with aiohttp.ClientSession() as session, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1)) as reader:
        gate = asyncio.Semaphore(16)

        async def create(i: int) -> tuple[str, str]:
            async with gate:
                key = keys[i % len(keys)]
                return key, await _create(session, api_url, key, f"b{i}")
        t0 = time.perf_counter()
        made = await asyncio.gather(*(create(i) for i in range(n)))
        created_s = time.perf_counter() - t0
        # The window: once every batch has left validating (the API validates at create).
        pending = list(made)
        while pending:
            pending = [(k, b) for k, b in pending if (await _status(reader, api_url, k, b))[1] == "validating"]
        due0, claims0, open_at_start = await _metrics(session, root)
        w0 = time.perf_counter()
        gets: list[float] = []
        while time.perf_counter() - w0 < WINDOW:
            key, b = random.choice(made)
            ms, _ = await _status(reader, api_url, key, b)
            gets.append(ms)
        due1, claims1, open_at_end = await _metrics(session, root)
        window = time.perf_counter() - w0
        # Then to the end: every batch completed.
        left = list(made)
        while left:
            key, b = left[-1]
            ms, status = await _status(reader, api_url, key, b)
            gets.append(ms)
            if status in TERMINAL:
                left.pop()
        done_s = time.perf_counter() - t0
    return {"batches": n, "created_s": created_s, "completed_s": done_s, "window_s": window,
            "due_statements_per_s": (due1 - due0) / window, "claims_per_s": (claims1 - claims0) / window,
            "get_p50_ms": percentile(gets, 50), "get_p99_ms": percentile(gets, 99), "gets": len(gets),
            "open_at_start": open_at_start, "open_at_end": open_at_end}


def measure(database_url: str, log_dir, n: int, concurrency: int = CONCURRENCY) -> dict:
    from .drain import create_key
    procs = Processes(log_dir)
    try:
        mock_url = procs.mock(database_url, latency_ms=LATENCY_MS)
        _, api_url = procs.eventbatch("serve", database_url, mock_url, concurrency=concurrency)
        keys = [create_key(database_url, f"proj-{p}") for p in range(PROJECTS)]
        return asyncio.run(_measure(api_url, keys, n))
    finally:
        procs.close()


def run(quick: bool, full: bool, ctx) -> dict:
    # The small run must keep the worker busy through the window too (same request rate).
    small, big, concurrency = (40, 200, 20) if quick else (200, 2_000, CONCURRENCY)
    s = measure(ctx.fresh_database("open_batches_small"), ctx.tmp, small, concurrency)
    ctx.drop_databases()
    b = measure(ctx.fresh_database("open_batches"), ctx.tmp, big, concurrency)
    flat_due = b["due_statements_per_s"] <= 1.5 * max(s["due_statements_per_s"], 1.0)
    flat_claims = b["claims_per_s"] <= 1.5 * max(s["claims_per_s"], 1.0)
    ideal = big * REQUESTS / concurrency * LATENCY_MS / 1000
    return {
        "name": "open_batches",
        "figures": {"small": s, "big": b, "ideal_completion_s": ideal},
        "rows": [
            {"figure": f"{big:,} batches completed, s", "eventbatch": b["completed_s"], "peer": ideal,
             "ratio": b["completed_s"] / ideal, "target": "", "met": None},
            {"figure": f"GET p99 with {big:,} open, ms", "eventbatch": b["get_p99_ms"], "peer": None,
             "ratio": None, "target": "≤ 20 ms", "met": b["get_p99_ms"] <= 20},
            {"figure": f"sweeper statements/s, {big:,} vs {small:,} open", "eventbatch": b["due_statements_per_s"],
             "peer": s["due_statements_per_s"], "ratio": b["due_statements_per_s"] / max(s["due_statements_per_s"], 1e-9),
             "target": "flat (≤ 1.5×)", "met": flat_due},
            {"figure": f"claims/s, {big:,} vs {small:,} open", "eventbatch": b["claims_per_s"],
             "peer": s["claims_per_s"], "ratio": b["claims_per_s"] / max(s["claims_per_s"], 1e-9),
             "target": "flat (≤ 1.5×)", "met": flat_claims},
        ],
        "targets": [
            {"target": "GET p99 ≤ 20 ms", "value": b["get_p99_ms"], "met": b["get_p99_ms"] <= 20},
            {"target": "sweeper statements/s flat", "value": b["due_statements_per_s"], "met": flat_due},
            {"target": "claims/s flat", "value": b["claims_per_s"], "met": flat_claims},
        ],
        "notes": (f"`eventbatch serve`, concurrency {concurrency}, mock upstream at {LATENCY_MS} ms; {big:,} (and "
                  f"{small:,}) batches of {REQUESTS} requests over {PROJECTS} projects, created through the API "
                  f"in {b['created_s']:.1f} s ({s['created_s']:.1f} s). Statements per second over the first "
                  f"{WINDOW:g} s after every batch was in progress (both sizes run at the same request rate, so "
                  f"the same completions per second); ideal completion: requests ÷ concurrency × latency. "
                  f"GETs: one at a time on one connection, of random batches, until all completed "
                  f"({b['gets']:,} at {big:,})."),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.open_batches")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    import tempfile
    from pathlib import Path

    from .context import Context
    with tempfile.TemporaryDirectory(prefix="eventbatch-bench-") as t:
        ctx = Context(Path(t))
        try:
            r = run(a.quick, False, ctx)
        finally:
            ctx.close()
    print(json.dumps(r["figures"], indent=1))
    for row in r["rows"]:
        print(f"{row['figure']}: {row['eventbatch']:.2f} (peer {row['peer']}) target {row['target'] or '—'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
