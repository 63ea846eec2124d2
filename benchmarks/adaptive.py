"""adaptive: a provider that answers 429 whenever more than 16 requests are in flight (SPEC §11:
on 429s a provider's concurrency is cut, then grows back with successes). `eventbatch
mock-upstream --max-in-flight 16 --latency-ms 50` (every 429 with retry-after-ms 20), and a
batch through `eventbatch serve` configured for concurrency 64 — which adapts — next to the
same batch with concurrency fixed at 16 (the right figure, known in advance), alternating.

Figures: the share of upstream attempts that got 429 (target < 10%), and throughput next to
the fixed 16 (target ≥ 0.9×); also the concurrency the scheduler settled at (/metrics).

    python -m benchmarks.adaptive [--requests 4000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import io
import json
import time
import urllib.request

from .outage import TERMINAL, _lines, _metric
from .processes import Processes

LIMIT = 16
CONFIGURED = 64
LATENCY_MS = 50
TARGET_429_SHARE = 0.10
TARGET_THROUGHPUT = 0.9


def _mock_stats(control_root: str) -> dict:
    with urllib.request.urlopen(control_root + "/_mock/stats", timeout=10) as r:
        return json.loads(r.read())


def _reset(control_root: str) -> None:
    urllib.request.urlopen(urllib.request.Request(control_root + "/_mock/reset", data=b"", method="POST"),
                           timeout=10).read()


def one_run(ctx, mock_url: str, control: str, n: int, concurrency: int) -> dict:
    """A fresh database and `serve` at `concurrency`; one batch of n; what the mock saw."""
    import openai

    from .drain import create_key
    database_url = ctx.fresh_database("adaptive")
    procs = Processes(ctx.tmp)
    try:
        _, api_url = procs.eventbatch("serve", database_url, mock_url, concurrency)
        client = openai.OpenAI(base_url=api_url, api_key=create_key(database_url, "bench"), max_retries=0,
                               timeout=120)
        f = client.files.create(file=("adaptive.jsonl", io.BytesIO(_lines(n))), purpose="batch")
        _reset(control)
        t0 = time.perf_counter()
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        while (b := client.batches.retrieve(b.id)).status not in TERMINAL:
            if time.perf_counter() - t0 > 900:
                raise RuntimeError(f"batch {b.id} still {b.status} after 900 s")
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        if b.status != "completed" or b.request_counts.completed != n:
            raise RuntimeError(f"batch {b.id} ended {b.status} with {b.request_counts}")
        stats = _mock_stats(control)
        attempts = stats["requests"]
        limited = stats["by_status"].get("429", 0)
        return {"rps": n / seconds, "seconds": seconds, "attempts": attempts, "rate_limited": limited,
                "share_429": limited / attempts if attempts else 0.0, "max_in_flight": stats["max_in_flight"],
                "concurrency_now": _metric(api_url, 'eventbatch_provider_concurrency{provider="default"}')}
    finally:
        procs.close()
        ctx.drop_databases()


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def run(quick: bool, full: bool, ctx) -> dict:
    n = 800 if quick else 8_000 if full else 4_000
    rounds = 1 if quick else 3 if full else 2
    procs = Processes(ctx.tmp)
    adaptive, fixed = [], []
    try:
        mock_url, control = procs.mock_with_control(ctx.database_url, "--max-in-flight", str(LIMIT),
                                                    "--latency-ms", str(LATENCY_MS))
        for i in range(rounds):             # alternating, and which goes first too
            pair = [lambda: adaptive.append(one_run(ctx, mock_url, control, n, CONFIGURED)),
                    lambda: fixed.append(one_run(ctx, mock_url, control, n, LIMIT))]
            for f in pair if i % 2 == 0 else reversed(pair):
                f()
    finally:
        procs.close()
    a_rps, f_rps = _median([r["rps"] for r in adaptive]), _median([r["rps"] for r in fixed])
    share = _median([r["share_429"] for r in adaptive])
    ratio = a_rps / f_rps
    figures = {"requests": n, "rounds": rounds, "adaptive_rps": round(a_rps), "fixed16_rps": round(f_rps),
               "throughput_ratio": round(ratio, 3), "adaptive_429_share": round(share, 4),
               "fixed16_429_share": round(_median([r["share_429"] for r in fixed]), 4),
               "adaptive_runs": adaptive, "fixed16_runs": fixed}
    return {
        "name": "adaptive", "figures": figures,
        "rows": [
            {"figure": f"share of attempts answered 429 (configured {CONFIGURED}, provider takes {LIMIT})",
             "eventbatch": f"{share:.1%}", "peer": f"{figures['fixed16_429_share']:.1%}",
             "target": "< 10%", "met": share < TARGET_429_SHARE},
            {"figure": f"req/s, {n:,} requests at {LATENCY_MS} ms: adaptive from {CONFIGURED} vs fixed {LIMIT}",
             "eventbatch": a_rps, "peer": f_rps, "ratio": ratio, "target": "≥ 0.9× fixed 16",
             "met": ratio >= TARGET_THROUGHPUT},
            {"figure": "concurrency the scheduler ended at (/metrics)",
             "eventbatch": _median([r["concurrency_now"] or 0 for r in adaptive]), "peer": LIMIT},
        ],
        "targets": [{"target": "< 10% of attempts answered 429", "value": round(share, 4),
                     "met": share < TARGET_429_SHARE},
                    {"target": "throughput ≥ 0.9× a fixed concurrency of 16", "value": round(ratio, 3),
                     "met": ratio >= TARGET_THROUGHPUT}],
        "notes": (f"`eventbatch mock-upstream --max-in-flight {LIMIT} --latency-ms {LATENCY_MS}` (a request beyond "
                  f"{LIMIT} in flight is answered 429 at once, retry-after-ms 20); `eventbatch serve` with upstream "
                  f"concurrency {CONFIGURED} (AIMD on 429s) and, as the peer, {LIMIT} (fixed, nothing to adapt); "
                  f"a fresh `serve` and database per run, median of {rounds} alternating rounds; attempts counted "
                  f"by the mock. The ceiling is {LIMIT} / {LATENCY_MS} ms = {LIMIT * 1000 // LATENCY_MS} req/s."),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.adaptive")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--full", action="store_true")
    a = p.parse_args(argv)
    from .__main__ import run_alone
    return run_alone(run, a.quick, a.full)


if __name__ == "__main__":
    raise SystemExit(main())
