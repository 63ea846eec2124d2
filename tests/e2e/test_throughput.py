"""Requests/s of a 10,000-request batch through the mock at zero latency, next to a plain
asyncio + aiohttp script at the same concurrency (printed; the ratio is the result, the machine
is shared and noisy, so nothing here asserts a speed)."""

from __future__ import annotations

import asyncio

from benchmarks.drain import Stack, create_key, drain_eventbatch, lines_for
from benchmarks.plain_client import run_plain


def test_drain_10000_requests_next_to_a_plain_script(fresh_db, tmp_path):
    iso = fresh_db()
    stack = Stack(iso.url, latency_ms=0, concurrency=64, log_dir=tmp_path)
    try:
        lines = lines_for(10_000)
        eb = drain_eventbatch(stack.api_url, create_key(iso.url, "bench"), lines)
        plain = asyncio.run(run_plain(lines, stack.mock_url, 64, tmp_path / "plain.jsonl"))
    finally:
        stack.close()
    assert eb["output_lines"] == 10_000
    # every outcome is a durable event, exactly one per request
    assert iso.fetchval("SELECT count(*) FROM events WHERE batch_id = $1 AND request_index IS NOT NULL",
                        eb["batch_id"]) == 10_000
    print(f"\n[drain] 10,000 requests, concurrency 64, 0 ms: eventbatch {eb['rps']:,.0f} req/s "
          f"(upload to download, every event durable); plain asyncio+aiohttp {plain:,.0f} req/s; "
          f"ratio {eb['rps'] / plain:.2f}")
