"""Expiry works like cancel (SPEC §5, §11): at expires_at no request starts, those in flight stop,
what finished is recorded, then the batch settles as `expired`; results a worker holds when the
window ends are kept, not dropped."""

from __future__ import annotations

import asyncio
import io
import time

import asyncpg
import openai
import pytest

from conftest import UPSTREAM_KEY, chat_line, jsonl, start_mock, start_server, wait_status
from invariants import assert_invariants


@pytest.fixture()
def iso(fresh_db):
    return fresh_db()


def _lines() -> list[dict]:
    # 32 answered after 4 s, 20 between 4.3 and 5.3 s (all before the window ends, 9-10 s after
    # the create), 20 still in flight at the end of the window.
    return ([chat_line(i, mock={"latency_ms": 4000}) for i in range(32)]
            + [chat_line(32 + i, mock={"latency_ms": 4300 + 50 * i}) for i in range(20)]
            + [chat_line(52 + i, mock={"latency_ms": 60_000}) for i in range(20)])


def test_results_a_worker_holds_at_expiry_are_kept(start_proc, new_key, iso):
    """Two batches of one worker expire while its recorder cannot flush: the flush that would
    record them waits on the first batch's view row, which the test holds from before the first
    answers until 6 s after the window ends (far past the lease of 2 s, within the grace of
    batch.EXPIRY_GRACE_SECONDS). The second batch's own row is free, so the sweepers could settle
    it at once and drop what the worker holds; they must wait for its leases instead."""
    mock = start_mock(start_proc)
    window = dict(EVENTBATCH_WINDOW_SECONDS="10", EVENTBATCH_LEASE_SECONDS="2")
    api = start_server(start_proc, mock.base_url, role="api", db_url=iso.url, **window)
    start_proc("worker", db_url=iso.url, EVENTBATCH_UPSTREAM_URL=mock.base_url,
               EVENTBATCH_UPSTREAM_API_KEY=UPSTREAM_KEY, EVENTBATCH_UPSTREAM_CONCURRENCY="200", **window)
    client = openai.OpenAI(base_url=api.base_url, api_key=new_key(db_url=iso.url), max_retries=0)
    lines = _lines()
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    made = [client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
            for _ in range(2)]
    first, second = sorted(made, key=lambda b: b.id)      # a flush locks batches in id order
    for b in made:
        wait_status(client, b.id, {"in_progress"})

    async def hold_first_row() -> None:
        conn = await asyncpg.connect(iso.url)
        try:
            async with conn.transaction():
                await asyncio.sleep(max(0.0, first.created_at + 3 - time.time()))
                await conn.execute("SELECT 1 FROM batch_view WHERE id = $1 FOR UPDATE", first.id)
                await asyncio.sleep(max(0.0, second.expires_at + 6 - time.time()))
                # the second batch is still waiting for the worker's leases, not expired without them
                assert await conn.fetchval("SELECT status FROM batch_view WHERE id = $1", second.id) == "in_progress"
        finally:
            await conn.close()
    asyncio.run(hold_first_row())

    for b in (first, second):
        done = wait_status(client, b.id, {"expired"}, timeout=30)
        out, err = assert_invariants(client, iso, b.id, [x["custom_id"] for x in lines])
        # everything answered before the window ended is in the output file
        assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(52)), (b.id, len(out))
        assert {e["error"]["code"] for e in err} == {"batch_expired"} and len(err) == 20
        assert done.expired_at >= done.expires_at
