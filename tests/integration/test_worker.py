"""The worker in process against a real Postgres (and the mock over loopback): a chunk's release
never ahead of its outcomes, and a chunk whose task fails."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import msgspec
import pytest

from conftest import chat_line, jsonl
from eventbatch import batches, events as ev, files
from eventbatch.config import load_settings
from eventbatch.mock_upstream import MockSettings, start_mock
from eventbatch.worker import Worker, queue
from eventbatch.worker.providers import Provider
from eventbatch.worker.recorder import FLUSH_MAX, HeldChunk, Recorder
from eventbatch.worker.validating import validate_batch


async def _running_batch(pool, n: int, chunk_size: int) -> str:
    async def pieces():
        yield jsonl(chat_line(i) for i in range(n))
    async with pool.acquire() as conn:
        async with conn.transaction():
            fid, size = await files.store_upload(conn, pieces())
            await files.record_upload(conn, file_id=fid, project="p", filename="in.jsonl", purpose="batch",
                                      size=size, expires_after=None)
        state = await batches.create_batch(conn, project="p", input_file_id=fid, endpoint="/v1/chat/completions",
                                           completion_window="24h", metadata=None, output_expires_after=None,
                                           window_seconds=3600)
    state = await validate_batch(pool, state.id, chunk_size)
    assert state.status == "in_progress"
    return state.id


def _succeeded(index: int) -> ev.RequestSucceeded:
    return ev.RequestSucceeded(index=index, custom_id=f"req-{index}", status_code=200,
                               body=msgspec.Raw(b'{"ok":true}'), attempts=[ev.Attempt(at=1.0, duration_ms=1)])


@pytest.fixture
def url(fresh_db):
    return fresh_db().url


def test_a_release_queued_behind_more_than_one_flush_of_outcomes_waits_for_them(url):
    """More outcomes than one flush takes, then the chunk's release (as when a cancel stops a
    chunk): every outcome is recorded, none dropped as lost because the lease went back first."""
    n = FLUSH_MAX + 500

    async def scenario(pool):
        batch_id = await _running_batch(pool, n, chunk_size=n)
        [row] = await queue.claim(pool, "w1", 1, 30)
        chunk = HeldChunk(row)
        chunk.remaining = n
        recorder = Recorder(pool, "w1", on_batch_done=lambda b: None, on_chunk_finished=lambda c: None)
        for i in range(n - 1):          # all but one finished; the last one is cut short
            recorder.add(chunk, _succeeded(i))
        recorder.release(chunk)
        task = asyncio.create_task(recorder.run())
        try:
            await asyncio.wait_for(recorder.drain(), 30)
        finally:
            task.cancel()
        assert not chunk.lost
        recorded = await pool.fetchval("SELECT count(*) FROM events WHERE batch_id = $1 AND request_index IS NOT NULL",
                                       batch_id)
        assert recorded == n - 1
        lease = await pool.fetchrow("SELECT lease_owner, done FROM work_chunks WHERE batch_id = $1", batch_id)
        assert lease["lease_owner"] is None and not lease["done"]   # released, and the last request still open

    async def main():
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        try:
            await scenario(pool)
        finally:
            await pool.close()
    asyncio.run(main())


def test_a_chunk_task_that_raises_cancels_its_sibling_requests_first(url):
    """One request's task raises while its 19 siblings are in flight: they are cancelled before
    the lease goes back, so none of them finishes after the release and is sent again (the mock
    would see a second success of the same body)."""

    raised = []

    def raising_once(run_request):
        async def run_or_raise(chunk, run, index, *rest):
            if index == 0 and not raised:
                await asyncio.sleep(0.2)
                raised.append(index)
                raise RuntimeError("a defect in recording one request")
            return await run_request(chunk, run, index, *rest)
        return run_or_raise

    async def main():
        mock = await start_mock(MockSettings(latency_ms=600))
        pool = await asyncpg.create_pool(url, min_size=1, max_size=8)
        worker = None
        try:
            batch_id = await _running_batch(pool, 20, chunk_size=20)
            settings = load_settings({}, upstream_url=mock.base_url)
            worker = Worker(settings, pool, providers=[Provider(name="default", base_url=mock.base_url)])
            worker.chunks._run_request = raising_once(worker.chunks._run_request)
            await worker.start()
            for _ in range(300):
                status = await pool.fetchval("SELECT status FROM batch_view WHERE id = $1", batch_id)
                if status == "completed":
                    break
                await asyncio.sleep(0.1)
            assert raised and status == "completed"
            async with aiohttp.ClientSession() as session:
                async with session.get(mock.base_url.removesuffix("/v1") + "/_mock/stats") as r:
                    stats = await r.json()
            assert stats["successes"] == 20 and stats["duplicate_successes"] == 0
        finally:
            if worker is not None:
                await worker.stop()
            await pool.close()
            await mock.server.cleanup()
    asyncio.run(main())
