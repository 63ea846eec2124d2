"""The commands and the finalizer against a real Postgres, in process: the odd orders of SPEC §5
that the domain decides (tests/unit/test_lifecycle.py) really end that way once the callers
gather their facts from the database and append what the domain returns."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import chat_line, jsonl, with_pool as _go
from eventbatch import batch as domain, batches, events as ev, files, projections, rebuild
from eventbatch.worker import queue
from eventbatch.worker.finalizer import settle_batch
from eventbatch.worker.validating import validate_batch


async def _upload(conn, data: bytes) -> str:
    async def pieces():
        yield data
    async with conn.transaction():
        fid, size = await files.store_upload(conn, pieces())
        await files.record_upload(conn, file_id=fid, project="p", filename="in.jsonl", purpose="batch",
                                  size=size, expires_after=None)
    return fid


async def _batch(pool, n: int, window_seconds: float = 3600) -> str:
    async with pool.acquire() as conn:
        fid = await _upload(conn, jsonl(chat_line(i) for i in range(n)))
        state = await batches.create_batch(conn, project="p", input_file_id=fid, endpoint="/v1/chat/completions",
                                           completion_window="24h", metadata=None, output_expires_after=None,
                                           window_seconds=window_seconds)
    return state.id


async def _outcomes(pool, batch_id: str) -> dict[int, ev.Event]:
    rows = await pool.fetch("SELECT data FROM events WHERE batch_id = $1 AND request_index IS NOT NULL", batch_id)
    return {o.index: o for o in (ev.decode(r[0]) for r in rows)}


@pytest.fixture
def url(fresh_db):
    return fresh_db().url


def test_cancel_before_validation_accounts_for_every_request(url):
    async def scenario(pool):
        bid = await _batch(pool, 7)
        async with pool.acquire() as conn:
            state = await batches.cancel_batch(conn, bid)
        assert state.status == "cancelling" and not domain.validated(state)
        state = await settle_batch(pool, bid, chunk_size=3)     # validates first, then settles
        assert state.status == "cancelled" and state.request_counts.total == 7
        outcomes = await _outcomes(pool, bid)
        assert sorted(outcomes) == list(range(7))
        assert {o.error_code for o in outcomes.values()} == {"batch_cancelled"}
        async with pool.acquire() as conn:
            assert not await queue.any_open(conn, bid)            # the queue is closed with the batch
            _, diffs = await rebuild.verify(conn)
        assert diffs == []
    _go(url, scenario)


def test_expiry_during_validation_validates_first_then_expires_everything(url):
    async def scenario(pool):
        bid = await _batch(pool, 5, window_seconds=0.01)
        await asyncio.sleep(0.05)
        # settling a validating batch past its window does nothing: there is no validating -> expired
        state = await settle_batch(pool, bid)
        assert state.status == "validating"
        state = await validate_batch(pool, bid, chunk_size=2)
        assert state.status == "in_progress" and state.request_counts.total == 5
        # no worker holds a lease: expiry settles at once, every request accounted for
        state = await settle_batch(pool, bid)
        assert state.status == "expired" and state.request_counts.failed == 5
        assert {o.error_code for o in (await _outcomes(pool, bid)).values()} == {"batch_expired"}
        assert state.error_file_id is not None and state.output_file_id is None
    _go(url, scenario)


def test_a_live_lease_holds_a_cancel_until_it_is_released(url):
    async def scenario(pool):
        bid = await _batch(pool, 4)
        await validate_batch(pool, bid, chunk_size=4)
        async with pool.acquire() as conn:
            [chunk] = await queue.claim(conn, "w1", 1, 30)
            await batches.cancel_batch(conn, bid)
        assert (await settle_batch(pool, bid)).status == "cancelling"     # the worker still holds its chunk
        async with pool.acquire() as conn:
            await queue.release(conn, bid, [chunk["chunk_no"]], "w1")
        state = await settle_batch(pool, bid)
        assert state.status == "cancelled" and state.request_counts.failed == 4
    _go(url, scenario)


def test_completion_goes_through_finalizing_and_writes_the_files(url):
    async def scenario(pool):
        bid = await _batch(pool, 3)
        await validate_batch(pool, bid, chunk_size=3)
        async with pool.acquire() as conn:
            [chunk] = await queue.claim(conn, "w1", 1, 30)
            async with conn.transaction():
                state = await projections.lock_batch(conn, bid)
                from eventbatch import store
                outs = [ev.RequestSucceeded(index=i, custom_id=f"req-{i}", status_code=200,
                                            body=ev.NULL, attempts=[]) for i in range(3)]
                await store.append_outcomes(conn, bid, outs)
                await projections.save_batch(conn, domain.fold(state, outs))
                await queue.mark_done(conn, bid, [chunk["chunk_no"]])
        t0 = time.time()
        state = await settle_batch(pool, bid)
        assert state.status == "completed" and state.request_counts.completed == 3
        assert state.finalizing_at is not None and state.finalizing_at <= state.completed_at <= t0 + 5
        assert state.output_file_id and state.error_file_id is None
        types = [r[0] for r in await pool.fetch(
            "SELECT type FROM events WHERE batch_id = $1 AND request_index IS NULL ORDER BY position", bid)]
        assert types[-3:] == ["batch_finalizing", "batch_output_written", "batch_completed"]
        assert (await settle_batch(pool, bid)).status == "completed"       # settling again changes nothing
    _go(url, scenario)
