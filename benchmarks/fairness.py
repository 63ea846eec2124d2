"""fairness: SPEC §11's fair share. Project A's four big batches are running; project B then
creates a 100-request batch. B's time from create to completed, beside A, ÷ B's time alone on
the same processes (target ≤ 2×: B gets half of the provider while A runs), and A's throughput
while B runs next to A's throughput before it (A keeps going, it is not starved either).

`eventbatch serve` at concurrency 16 against `eventbatch mock-upstream` at 250 ms, loopback only.
A's batches are 10,000 requests each as in SPEC §11 (1,000 with --quick); they are cancelled
once B is done, so a round takes seconds, not A's whole run.

    python -m benchmarks.fairness [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

from .processes import Processes

LATENCY_MS = 250
CONCURRENCY = 16
B_REQUESTS = 100


def _lines(n: int, tag: str) -> bytes:
    return b"".join(json.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "gpt-4o-mini", "max_tokens": 16,
                                         "messages": [{"role": "user", "content": f"question {i}"}]}}).encode()
                    + b"\n" for i in range(n))


def _create(client, data: bytes):
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def _wait(client, batch_id: str, statuses: set[str], timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while client.batches.retrieve(batch_id).status not in statuses:
        if time.time() > deadline:
            raise RuntimeError(f"batch {batch_id} not {statuses} after {timeout} s")
        time.sleep(0.02)


def _time_b(client) -> float:
    t0 = time.perf_counter()
    b = _create(client, _lines(B_REQUESTS, "b"))
    _wait(client, b.id, {"completed"})
    return time.perf_counter() - t0


def _a_done(client, batches) -> int:
    return sum(client.batches.retrieve(x.id).request_counts.completed for x in batches)


def measure(database_url: str, log_dir, a_requests: int, rounds: int) -> dict:
    import openai

    from .drain import create_key
    procs = Processes(log_dir)
    try:
        mock_url = procs.mock(database_url, latency_ms=LATENCY_MS)
        _, api_url = procs.eventbatch("serve", database_url, mock_url, concurrency=CONCURRENCY)
        a = openai.OpenAI(base_url=api_url, api_key=create_key(database_url, "proj-a"), max_retries=0, timeout=120)
        b = openai.OpenAI(base_url=api_url, api_key=create_key(database_url, "proj-b"), max_retries=0, timeout=120)
        _time_b(b)                                                    # warm-up, not counted
        out = []
        for _ in range(rounds):
            alone = _time_b(b)
            big = [_create(a, _lines(a_requests, f"a{i}")) for i in range(4)]
            for x in big:
                _wait(a, x.id, {"in_progress"})
            time.sleep(2.0)                                           # A at full speed
            t0, done0 = time.perf_counter(), _a_done(a, big)
            time.sleep(3.0)
            a_before = (_a_done(a, big) - done0) / (time.perf_counter() - t0)
            t1, done1 = time.perf_counter(), _a_done(a, big)
            beside = _time_b(b)
            a_during = (_a_done(a, big) - done1) / (time.perf_counter() - t1)
            a_left = sum(a_requests for _ in big) - _a_done(a, big)
            for x in big:
                try:
                    a.batches.cancel(x.id)
                except openai.ConflictError:
                    pass
            for x in big:
                _wait(a, x.id, {"cancelled", "completed"})
            out.append({"alone_s": alone, "beside_s": beside, "ratio": beside / alone,
                        "a_before_rps": a_before, "a_during_rps": a_during, "a_left": a_left})
        return {"rounds": out}
    finally:
        procs.close()


def run(quick: bool, full: bool, ctx) -> dict:
    a_requests, rounds = (1_000, 1) if quick else (10_000, 3 if full else 2)
    m = measure(ctx.fresh_database("fairness"), ctx.tmp, a_requests, rounds)
    rs = m["rounds"]
    med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
    ideal_rps = CONCURRENCY / (LATENCY_MS / 1000)
    return {
        "name": "fairness",
        "figures": {**m, "median": med, "ideal_rps": ideal_rps},
        "rows": [
            {"figure": "B's 100 requests beside A, s", "eventbatch": med["beside_s"], "peer": med["alone_s"],
             "ratio": med["ratio"], "target": "≤ 2× alone", "met": med["ratio"] <= 2},
            {"figure": "A's throughput while B runs, req/s", "eventbatch": med["a_during_rps"],
             "peer": med["a_before_rps"], "ratio": med["a_during_rps"] / med["a_before_rps"],
             "target": "", "met": None},
        ],
        "targets": [{"target": "B beside A ≤ 2× B alone", "value": med["ratio"], "met": med["ratio"] <= 2}],
        "notes": (f"`eventbatch serve`, concurrency {CONCURRENCY}, mock upstream at {LATENCY_MS} ms (ideal "
                  f"{ideal_rps:.0f} req/s). Peer of B's time: B alone on the same processes just before; of A's "
                  f"throughput: A's in the 3 s before B. A: four batches of {a_requests:,} requests of project A, "
                  f"running before B's is created, cancelled after (A had {med['a_left']:,.0f} requests left when "
                  f"B finished). Median of {len(rs)} round(s)."),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fairness")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    import tempfile
    from pathlib import Path

    from .context import Context
    with tempfile.TemporaryDirectory(prefix="eventbatch-bench-") as t:
        ctx = Context(Path(t))
        try:
            m = measure(ctx.fresh_database("fairness"), ctx.tmp, 1_000 if a.quick else 10_000, a.rounds)
        finally:
            ctx.close()
    for r in m["rounds"]:
        print(f"B alone {r['alone_s']:.2f} s, beside A {r['beside_s']:.2f} s ({r['ratio']:.2f}×); "
              f"A {r['a_before_rps']:.0f} req/s before B, {r['a_during_rps']:.0f} while B ran")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
