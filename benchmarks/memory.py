"""memory: peak resident memory (RSS) of eventbatch's processes while they drain batches through
the mock upstream (0 ms latency), at two batch sizes, to show whether it grows with them.

- `eventbatch serve` (API and worker in one process) running 4 batches at once: the four
  files uploaded, the four batches created, drained, and their output files downloaded.
- a lone `eventbatch worker` (with a separate `eventbatch api`) over one batch.

Each configuration gets fresh processes and a fresh database. RSS is sampled with psutil every
100 ms; the kernel's own high-water mark (VmHWM) is read before the process is stopped and the
larger of the two is reported. The peer is the plain asyncio + aiohttp script
(benchmarks/plain_client.py: sends every line, keeps the answers, writes them out) over the same
requests, in a subprocess of its own (its ru_maxrss), run in turn with the worker.

    python -m benchmarks.memory [--small 10000] [--big 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from .processes import ROOT, Processes, RssSampler, peak_rss_of

TERMINAL = {"completed", "failed", "expired", "cancelled"}
CONCURRENCY = 64
GROWTH_TOLERANCE = 1.10       # "not growing": the big batches' peak within 10% of the small ones'


def _lines(n: int, tag: str) -> bytes:
    return b"".join(json.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "gpt-4o-mini", "max_tokens": 16,
                                         "messages": [{"role": "user", "content": f"question number {i}"}]}}
                               ).encode() + b"\n" for i in range(n))


def drain_batches(api_url: str, key: str, sizes: list[int], timeout: float = 1200) -> float:
    """Upload and create one batch per size, wait until all are done, download every output
    file (streamed); returns the seconds it all took."""
    import openai
    client = openai.OpenAI(base_url=api_url, api_key=key, max_retries=0, timeout=300)
    t0 = time.perf_counter()
    batches = {}
    for j, n in enumerate(sizes):
        f = client.files.create(file=(f"memory-{j}.jsonl", io.BytesIO(_lines(n, f"b{j}"))), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        batches[b.id] = n
    done = {}
    while len(done) < len(batches):
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"batches not done after {timeout}s: {sorted(set(batches) - set(done))}")
        time.sleep(0.5)
        for batch_id in batches.keys() - done.keys():
            b = client.batches.retrieve(batch_id)
            if b.status in TERMINAL:
                done[batch_id] = b
    for batch_id, b in done.items():
        if b.status != "completed" or b.request_counts.completed != batches[batch_id]:
            raise RuntimeError(f"batch {batch_id} ended {b.status} with {b.request_counts}")
        lines = 0
        with client.files.with_streaming_response.content(b.output_file_id) as r:
            for piece in r.iter_bytes():
                lines += piece.count(b"\n")
        if lines != batches[batch_id]:
            raise RuntimeError(f"batch {batch_id}: {lines} output lines, {batches[batch_id]} expected")
    return time.perf_counter() - t0


def _peak(sampler: RssSampler, pid: int) -> int:
    sampler.stop()
    return max(sampler.peak, peak_rss_of(pid) or 0)


def serve_peak(ctx, sizes: list[int]) -> dict:
    from .drain import create_key
    database_url = ctx.fresh_database("memory_serve")
    procs = Processes(ctx.tmp)
    try:
        mock_url = procs.mock(database_url)
        serve, api_url = procs.eventbatch("serve", database_url, mock_url, CONCURRENCY)
        with RssSampler(serve.pid) as sampler:
            seconds = drain_batches(api_url, create_key(database_url, "bench"), sizes)
            peak = _peak(sampler, serve.pid)
        return {"peak_rss": peak, "seconds": seconds, "samples": sampler.samples}
    finally:
        procs.close()


def worker_peak(ctx, n: int) -> dict:
    """A lone worker and a separate API over one batch of n; then the plain script's peak over
    the same n requests on the same mock."""
    from .drain import create_key
    database_url = ctx.fresh_database("memory_worker")
    procs = Processes(ctx.tmp)
    try:
        mock_url = procs.mock(database_url)
        api, api_url = procs.eventbatch("api", database_url)
        worker, _ = procs.eventbatch("worker", database_url, mock_url, CONCURRENCY)
        with RssSampler(worker.pid) as w, RssSampler(api.pid) as a:
            seconds = drain_batches(api_url, create_key(database_url, "bench"), [n])
            worker_rss, api_rss = _peak(w, worker.pid), _peak(a, api.pid)
        plain = plain_peak(mock_url, n)
        return {"worker_peak_rss": worker_rss, "api_peak_rss": api_rss, "seconds": seconds,
                "plain_peak_rss": plain["peak_rss"], "plain_seconds": plain["seconds"]}
    finally:
        procs.close()


def plain_peak(mock_url: str, n: int) -> dict:
    import subprocess
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--plain", mock_url, str(n)],
                         capture_output=True, check=True, timeout=1200, cwd=ROOT)
    return json.loads(out.stdout)


def _plain_child(mock_url: str, n: int) -> None:
    from .plain_client import run_plain
    lines = [json.loads(x) for x in _lines(n, "plain").splitlines()]
    with tempfile.TemporaryDirectory() as t:
        t0 = time.perf_counter()
        asyncio.run(run_plain(lines, mock_url, CONCURRENCY, Path(t) / "out.jsonl"))
        seconds = time.perf_counter() - t0
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "seconds": seconds}))


def run(quick: bool, full: bool, ctx) -> dict:
    small, big = (500, 2_000) if quick else (10_000, 50_000)
    mb = lambda b: round(b / 1e6, 1)  # noqa: E731
    w_small = worker_peak(ctx, small)
    ctx.drop_databases()
    w_big = worker_peak(ctx, big)
    ctx.drop_databases()
    s_small = serve_peak(ctx, [small] * 4)
    ctx.drop_databases()
    s_big = serve_peak(ctx, [big] * 4)
    worker_growth = w_big["worker_peak_rss"] / w_small["worker_peak_rss"]
    serve_growth = s_big["peak_rss"] / s_small["peak_rss"]
    limit = 300e6
    figures = {
        "small": small, "big": big,
        "serve_4x_small_peak_mb": mb(s_small["peak_rss"]), "serve_4x_big_peak_mb": mb(s_big["peak_rss"]),
        "serve_growth": round(serve_growth, 3),
        "serve_4x_big_seconds": round(s_big["seconds"], 1), "serve_4x_big_rps": round(4 * big / s_big["seconds"]),
        "worker_small_peak_mb": mb(w_small["worker_peak_rss"]), "worker_big_peak_mb": mb(w_big["worker_peak_rss"]),
        "worker_growth": round(worker_growth, 3),
        "api_small_peak_mb": mb(w_small["api_peak_rss"]), "api_big_peak_mb": mb(w_big["api_peak_rss"]),
        "plain_small_peak_mb": mb(w_small["plain_peak_rss"]), "plain_big_peak_mb": mb(w_big["plain_peak_rss"]),
        "worker_big_seconds": round(w_big["seconds"], 1), "plain_big_seconds": round(w_big["plain_seconds"], 1),
    }
    return {
        "name": "memory",
        "figures": figures,
        "rows": [
            {"figure": f"serve peak RSS, 4 × {big:,} at once, MB", "eventbatch": figures["serve_4x_big_peak_mb"],
             "target": "≤ 300 MB", "met": s_big["peak_rss"] <= limit},
            {"figure": f"serve peak growth, 4 × {small:,} → 4 × {big:,}", "eventbatch": f"{serve_growth:.2f}×",
             "target": "≤ 1.10× (not growing)", "met": serve_growth <= GROWTH_TOLERANCE},
            {"figure": f"worker peak RSS, {big:,}, MB (peer: plain script)",
             "eventbatch": figures["worker_big_peak_mb"],
             "peer": figures["plain_big_peak_mb"], "ratio": w_big["worker_peak_rss"] / w_big["plain_peak_rss"],
             "target": "≤ 300 MB", "met": w_big["worker_peak_rss"] <= limit},
            {"figure": f"worker peak growth, {small:,} → {big:,}", "eventbatch": f"{worker_growth:.2f}×",
             "peer": f"{w_big['plain_peak_rss'] / w_small['plain_peak_rss']:.2f}×",
             "target": "≤ 1.10× (not growing)", "met": worker_growth <= GROWTH_TOLERANCE},
        ],
        "targets": [
            {"target": f"serve peak RSS ≤ 300 MB (4 × {big:,} at once)", "value": figures["serve_4x_big_peak_mb"],
             "met": s_big["peak_rss"] <= limit},
            {"target": f"worker peak RSS ≤ 300 MB ({big:,})", "value": figures["worker_big_peak_mb"],
             "met": w_big["worker_peak_rss"] <= limit},
            {"target": "serve peak not growing with batch size (≤ 1.10×)", "value": round(serve_growth, 3),
             "met": serve_growth <= GROWTH_TOLERANCE},
            {"target": "worker peak not growing with batch size (≤ 1.10×)", "value": round(worker_growth, 3),
             "met": worker_growth <= GROWTH_TOLERANCE},
        ],
        "notes": (f"Peak RSS (max of psutil samples every 100 ms and VmHWM), fresh processes per configuration, "
                  f"mock at 0 ms, upstream concurrency {CONCURRENCY}. serve: 4 batches of {small:,} then of "
                  f"{big:,} at once (upload, drain, download). worker: one batch of {small:,} then {big:,}, "
                  "the API in its own process. Peer: the plain asyncio+aiohttp script over the same "
                  "requests (keeps every answer in memory until it writes the file)."),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--big", type=int, default=50_000)
    p.add_argument("--plain", nargs=2, metavar=("MOCK_URL", "N"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.plain:
        _plain_child(a.plain[0], int(a.plain[1]))
        return 0
    from .context import Context
    with tempfile.TemporaryDirectory() as t:
        ctx = Context(Path(t))
        try:
            print(json.dumps({"worker": worker_peak(ctx, a.big), "serve": serve_peak(ctx, [a.big] * 4)}, indent=1))
        finally:
            ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
