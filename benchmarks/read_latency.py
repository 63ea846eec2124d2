"""read latency: p50/p99 of `GET /v1/batches/{id}` over HTTP, sequential requests on one
keep-alive connection (aiohttp client), against `eventbatch serve` idle and while it drains a
10,000-request batch through the mock upstream (0 ms latency: the worker goes as fast as it can,
in the same process as the API).

The peer is the floor of a database-backed GET: a bare aiohttp app in its own process that
answers the same path with one asyncpg query of the same view row (no auth, no decoding, no
re-encoding). Requests alternate between eventbatch and the floor, in blocks when idle and one
by one under drain, so both see the same machine. The whole is run twice: with `serve` (API and
worker share one event loop; the targets are judged on it) and with `eventbatch api` and
`eventbatch worker` as separate processes. Under drain, eventbatch is asked for the
draining batch itself (the row the worker's group commits update), and only answers that say
the batch was still validating or in progress count.

    python -m benchmarks.read_latency [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import sys
import time

import aiohttp

from .processes import Processes, eventbatch_env, free_port

TERMINAL = {"completed", "failed", "expired", "cancelled"}
BLOCK = 250


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, math.ceil(p / 100 * len(xs)) - 1))]


def _summary(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_ms": round(percentile(xs, 50), 3), "p99_ms": round(percentile(xs, 99), 3),
            "max_ms": round(max(xs), 3)}


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    async with session.get(url) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {url} answered {r.status}: {body[:200]!r}")
    return (time.perf_counter() - t0) * 1000, body


def _upload_and_create(api_url: str, key: str, n: int, tag: str) -> str:
    import openai
    client = openai.OpenAI(base_url=api_url, api_key=key, max_retries=0, timeout=120)
    data = b"".join(json.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "gpt-4o-mini", "max_tokens": 16,
                                         "messages": [{"role": "user", "content": f"question number {i}"}]}}
                               ).encode() + b"\n" for i in range(n))
    f = client.files.create(file=(f"{tag}.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id


async def _measure(api_url: str, floor_url: str, key: str, n: int, drain_requests: int) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=2)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        # A finished batch to read while idle.
        idle_id = await asyncio.to_thread(_upload_and_create, api_url, key, 10, "idle")
        while json.loads((await _get(session, f"{api_url}/batches/{idle_id}"))[1])["status"] not in TERMINAL:
            await asyncio.sleep(0.1)
        eb_url, floor_url_idle = f"{api_url}/batches/{idle_id}", f"{floor_url}/batches/{idle_id}"
        for _ in range(50):                                       # warm-up, not counted
            await _get(session, eb_url)
            await _get(session, floor_url_idle)
        idle_eb: list[float] = []
        idle_floor: list[float] = []
        while len(idle_eb) < n:
            idle_eb += [(await _get(session, eb_url))[0] for _ in range(min(BLOCK, n - len(idle_eb)))]
            idle_floor += [(await _get(session, floor_url_idle))[0] for _ in range(min(BLOCK, n - len(idle_floor)))]

        busy_eb: list[float] = []
        busy_floor: list[float] = []
        drains: list[float] = []
        for round_no in range(12):
            if len(busy_eb) >= n:
                break
            batch_id = await asyncio.to_thread(_upload_and_create, api_url, key, drain_requests, f"drain{round_no}")
            url, furl = f"{api_url}/batches/{batch_id}", f"{floor_url}/batches/{batch_id}"
            t0 = time.perf_counter()
            while True:
                ms, body = await _get(session, url)
                status = json.loads(body)["status"]
                if status in TERMINAL:
                    break
                if status == "finalizing":
                    continue    # the requests are done; writing the output file is another load
                busy_eb.append(ms)
                busy_floor.append((await _get(session, furl))[0])
            drains.append(time.perf_counter() - t0)
    return {"idle": _summary(idle_eb), "idle_floor": _summary(idle_floor),
            "drain": _summary(busy_eb), "drain_floor": _summary(busy_floor),
            "drain_batches": len(drains), "drain_seconds": [round(d, 2) for d in drains]}


def measure(database_url: str, log_dir, n: int, drain_requests: int, split: bool = False) -> dict:
    """`split`: a separate `eventbatch api` and `eventbatch worker` instead of `serve`."""
    from .drain import create_key
    procs = Processes(log_dir)
    try:
        mock_url = procs.mock(database_url)
        if split:
            _, api_url = procs.eventbatch("api", database_url)
            procs.eventbatch("worker", database_url, mock_url)
        else:
            _, api_url = procs.eventbatch("serve", database_url, mock_url)
        port = free_port()
        procs.start("floor", [sys.executable, "-m", "benchmarks.read_latency", "--floor-server", database_url,
                              str(port)], eventbatch_env(database_url),
                    f"http://127.0.0.1:{port}/v1/batches/none")
        key = create_key(database_url, "bench")
        return asyncio.run(_measure(api_url, f"http://127.0.0.1:{port}/v1", key, n, drain_requests))
    finally:
        procs.close()


def run(quick: bool, full: bool, ctx) -> dict:
    n, drain_requests = (300, 2_000) if quick else (5_000, 10_000) if full else (2_000, 10_000)
    m = measure(ctx.fresh_database("read_latency"), ctx.tmp, n, drain_requests)
    ctx.drop_databases()
    split = measure(ctx.fresh_database("read_latency_split"), ctx.tmp, n, drain_requests, split=True)
    idle, busy, sbusy = m["idle"], m["drain"], split["drain"]
    return {
        "name": "read_latency",
        "figures": {**m, "split": split},
        "rows": [
            {"figure": "p50 idle, ms", "eventbatch": idle["p50_ms"], "peer": m["idle_floor"]["p50_ms"],
             "ratio": idle["p50_ms"] / m["idle_floor"]["p50_ms"], "target": "", "met": None},
            {"figure": "p99 idle, ms", "eventbatch": idle["p99_ms"], "peer": m["idle_floor"]["p99_ms"],
             "ratio": idle["p99_ms"] / m["idle_floor"]["p99_ms"], "target": "≤ 5 ms", "met": idle["p99_ms"] <= 5},
            {"figure": "p50 under drain (serve), ms", "eventbatch": busy["p50_ms"], "peer": m["drain_floor"]["p50_ms"],
             "ratio": busy["p50_ms"] / m["drain_floor"]["p50_ms"], "target": "", "met": None},
            {"figure": "p99 under drain (serve), ms", "eventbatch": busy["p99_ms"], "peer": m["drain_floor"]["p99_ms"],
             "ratio": busy["p99_ms"] / m["drain_floor"]["p99_ms"], "target": "≤ 20 ms", "met": busy["p99_ms"] <= 20},
            {"figure": "p99 under drain (api + worker), ms", "eventbatch": sbusy["p99_ms"],
             "peer": split["drain_floor"]["p99_ms"], "ratio": sbusy["p99_ms"] / split["drain_floor"]["p99_ms"],
             "target": "", "met": None},
        ],
        "targets": [
            {"target": "p99 ≤ 5 ms idle", "value": idle["p99_ms"], "met": idle["p99_ms"] <= 5},
            {"target": "p99 ≤ 20 ms under drain", "value": busy["p99_ms"], "met": busy["p99_ms"] <= 20},
        ],
        "notes": (f"{idle['n']:,} sequential GETs idle (blocks of {BLOCK} alternating with the floor) and "
                  f"{busy['n']:,} while `eventbatch serve` drained {m['drain_batches']} batch(es) of "
                  f"{drain_requests:,} requests at 0 ms upstream latency (one eventbatch GET, one floor GET, "
                  "in turn). Floor: bare aiohttp + one asyncpg SELECT of the view row, in its own process. "
                  f"The same again with `eventbatch api` and `eventbatch worker` as separate processes "
                  f"({sbusy['n']:,} GETs under drain): the targets are judged on `serve`."),
    }


# --- the floor server ---------------------------------------------------------------------------

def floor_server(database_url: str, port: int) -> None:
    import asyncpg
    from aiohttp import web

    pool_key = web.AppKey("pool", asyncpg.Pool)

    async def get_batch(request: web.Request) -> web.Response:
        doc = await request.app[pool_key].fetchval("SELECT doc FROM batch_view WHERE id = $1",
                                                   request.match_info["batch_id"])
        if doc is None:
            return web.Response(status=404, body=b'{"error":{"message":"not found"}}', content_type="application/json")
        return web.Response(body=doc, content_type="application/json")

    async def pool_ctx(app: web.Application):
        app[pool_key] = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        yield
        await app[pool_key].close()

    app = web.Application()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.read_latency")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--drain-requests", type=int, default=10_000)
    p.add_argument("--floor-server", nargs=2, metavar=("DATABASE_URL", "PORT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.floor_server:
        floor_server(a.floor_server[0], int(a.floor_server[1]))
        return 0
    import tempfile
    from pathlib import Path

    from .context import Context
    with tempfile.TemporaryDirectory() as t:
        ctx = Context(Path(t))
        try:
            print(json.dumps(measure(ctx.fresh_database("read_latency"), ctx.tmp, a.requests, a.drain_requests),
                             indent=1))
        finally:
            ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
