"""Expired input files lose their stored bytes to a job that runs with the sweeper's due work
(SPEC §12.5), not only their visibility; a batch still reading one keeps them until it ends.
Real Postgres, in process, a database of the test's own."""

from __future__ import annotations

import time

import pytest

from conftest import chat_line, jsonl, with_pool as _go
from eventbatch import batches, events as ev, files, projections, rebuild
from eventbatch.worker.sweeper import Sweeper


async def _file(conn, data: bytes, expires_at: int | None) -> str:
    """An uploaded input file with a chosen expires_at (in the past, to be due now)."""
    async def pieces():
        yield data
    async with conn.transaction():
        fid, size = await files.store_upload(conn, pieces())
        await files.create_file(conn, ev.FileCreated(file_id=fid, project="p", filename="in.jsonl", purpose="batch",
                                                     bytes=size, at=time.time(), expires_at=expires_at))
    return fid


async def _stored(conn, fid: str) -> int:
    return await conn.fetchval("SELECT count(*) FROM file_blobs WHERE file_id = $1", fid)


@pytest.fixture
def url(fresh_db):
    return fresh_db().url


def test_the_sweep_purges_expired_input_bytes(url):
    async def scenario(pool):
        data = jsonl(chat_line(i) for i in range(3))
        async with pool.acquire() as conn:
            expired = await _file(conn, data, expires_at=int(time.time()) - 5)
            fresh = await _file(conn, data, expires_at=int(time.time()) + 3600)
            forever = await _file(conn, data, expires_at=None)
            assert await _stored(conn, expired) == 1
        await Sweeper(pool, 256).sweep()           # the sweeper's pass runs the purge
        async with pool.acquire() as conn:
            assert await _stored(conn, expired) == 0
            assert await _stored(conn, fresh) == 1 and await _stored(conn, forever) == 1
            types = [r[0] for r in await conn.fetch(
                "SELECT type FROM events WHERE stream = $1 ORDER BY version", f"file-{expired}")]
            assert types == ["file_created", "file_bytes_purged"]     # recorded in the log
            assert await projections.get_file(conn, expired, "p") is None
            doc = await conn.fetchval("SELECT doc FROM file_view WHERE id = $1", expired)
            assert projections.decode_file(doc).purged
            # a second pass has nothing left to do; the views still equal a fresh fold
            assert await files.purge_expired_inputs(pool) == 0
            _, diffs = await rebuild.verify(conn)
            assert diffs == []
            await rebuild.rebuild(pool)
            assert await conn.fetchval("SELECT purge_after FROM file_view WHERE id = $1", expired) is None
            assert projections.decode_file(await conn.fetchval("SELECT doc FROM file_view WHERE id = $1", expired)).purged
            assert await files.purge_expired_inputs(pool) == 0
    _go(url, scenario)


def test_a_running_batch_keeps_its_expired_input_until_it_ends(url):
    async def scenario(pool):
        async with pool.acquire() as conn:
            fid = await _file(conn, jsonl(chat_line(i) for i in range(3)), expires_at=int(time.time()) + 3600)
            state = await batches.create_batch(conn, project="p", input_file_id=fid, endpoint="/v1/chat/completions",
                                               completion_window="24h", metadata=None, output_expires_after=None,
                                               window_seconds=3600)
            later = time.time() + 7200            # past the file's expires_at
            assert await files.purge_expired_inputs(pool, now=later) == 0     # the batch still reads it
            assert await _stored(conn, fid) == 1
            async with conn.transaction():
                s = await projections.lock_batch(conn, state.id)
                await batches.append(conn, s, [ev.BatchValidationFailed(errors=[], error_count=0, at=time.time())])
            assert await files.purge_expired_inputs(pool, now=later) == 1     # ended: its bytes go
            assert await _stored(conn, fid) == 0
    _go(url, scenario)
