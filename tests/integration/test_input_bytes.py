"""A deleted input file keeps its bytes while a batch reads it, and loses them exactly when the
last reader ends (issue 10, "Leaked bytes"): two batches of one file that end together, and a
delete against a batch that is finishing, decide one after the other (the file's row lock),
so neither sees the other still running when it is not. Real Postgres, in process."""

from __future__ import annotations

import asyncio

import pytest

from conftest import chat_line, jsonl, with_pool
from eventbatch import batches, files
from eventbatch.worker.finalizer import settle_batch
from eventbatch.worker.validating import validate_batch


async def _upload(conn, data: bytes) -> str:
    async def pieces():
        yield data
    fid, size = await files.store_upload(conn, pieces())
    await files.record_upload(conn, file_id=fid, project="p", filename="in.jsonl", purpose="batch", size=size,
                              expires_after=None)
    return fid


async def _running(pool, fid: str) -> str:
    async with pool.acquire() as conn:
        state = await batches.create_batch(conn, project="p", input_file_id=fid, endpoint="/v1/chat/completions",
                                           completion_window="24h", metadata=None, output_expires_after=None,
                                           window_seconds=3600)
    await validate_batch(pool, state.id, chunk_size=2)
    return state.id


async def _cancelled(pool, batch_id: str) -> None:
    async with pool.acquire() as conn:
        await batches.cancel_batch(conn, batch_id)


async def _pieces(pool, fid: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM file_blobs WHERE file_id = $1", fid)


class _Meet:
    """Two deciders meet after their look and before they commit, when they can (at most
    `wait` seconds): the interleaving that lost the bytes, made certain. With the file's row
    lock one of them cannot get there before the other commits, and it goes on alone."""

    def __init__(self, wait: float = 0.5) -> None:
        self.arrived, self.both, self.wait = 0, asyncio.Event(), wait

    async def __call__(self) -> None:
        self.arrived += 1
        if self.arrived >= 2:
            self.both.set()
        try:
            await asyncio.wait_for(self.both.wait(), self.wait)
        except asyncio.TimeoutError:
            pass


def _go(url: str, scenario, size: int = 8):
    return with_pool(url, scenario, size)


@pytest.fixture
def url(fresh_db):
    return fresh_db().url


def _meet_after_the_look(monkeypatch, meet: _Meet):
    """Every decider (the finalizer's free_input_if_unused, delete_file) looks with input_in_use."""
    look = files.input_in_use

    async def looked(*args, **kwargs):
        answer = await look(*args, **kwargs)
        await meet()
        return answer
    monkeypatch.setattr(files, "input_in_use", looked)


def test_two_batches_of_a_deleted_file_ending_at_once_free_its_bytes(url, monkeypatch):
    meet = _Meet()
    _meet_after_the_look(monkeypatch, meet)

    async def scenario(pool):
        for _ in range(3):
            meet.__init__()
            async with pool.acquire() as conn:
                fid = await _upload(conn, jsonl(chat_line(i) for i in range(4)))
            a, b = await _running(pool, fid), await _running(pool, fid)
            async with pool.acquire() as conn:
                await files.delete_file(conn, "p", fid)
            assert await _pieces(pool, fid) > 0           # both still read it
            await _cancelled(pool, a)
            await _cancelled(pool, b)
            ends = await asyncio.gather(settle_batch(pool, a), settle_batch(pool, b))
            assert [s.status for s in ends] == ["cancelled", "cancelled"]
            assert await _pieces(pool, fid) == 0          # the last to end freed them
    _go(url, scenario)


def test_a_delete_against_a_batch_that_is_ending_frees_the_bytes_once_it_has(url, monkeypatch):
    meet = _Meet()
    _meet_after_the_look(monkeypatch, meet)

    async def scenario(pool):
        for _ in range(3):
            meet.__init__()
            async with pool.acquire() as conn:
                fid = await _upload(conn, jsonl(chat_line(i) for i in range(4)))
            a = await _running(pool, fid)
            await _cancelled(pool, a)

            async def delete():
                async with pool.acquire() as conn:
                    await files.delete_file(conn, "p", fid)
            _, state = await asyncio.gather(delete(), settle_batch(pool, a))
            assert state.status == "cancelled"
            assert await _pieces(pool, fid) == 0
    _go(url, scenario)


def test_batches_ending_together_without_help_never_leak(url):
    """The same races as they come, several times over: bytes kept while one reader runs, gone
    once the last has ended."""
    async def scenario(pool):
        for n in range(5):
            async with pool.acquire() as conn:
                fid = await _upload(conn, jsonl(chat_line(i) for i in range(4)))
            readers = [await _running(pool, fid) for _ in range(3)]
            for bid in readers:
                await _cancelled(pool, bid)

            async def delete():
                async with pool.acquire() as conn:
                    await files.delete_file(conn, "p", fid)
            if n % 2:
                await delete()
                await settle_batch(pool, readers[0])
                assert await _pieces(pool, fid) > 0        # two readers left
                await asyncio.gather(*(settle_batch(pool, b) for b in readers[1:]))
            else:
                await asyncio.gather(delete(), *(settle_batch(pool, b) for b in readers))
            assert await _pieces(pool, fid) == 0
    _go(url, scenario)


def test_a_failed_validation_frees_a_deleted_input(url):
    """A batch that ends by failing its validation is a reader that ended too."""
    async def scenario(pool):
        async with pool.acquire() as conn:
            fid = await _upload(conn, b'{"not": "a request"}\n')
            state = await batches.create_batch(conn, project="p", input_file_id=fid,
                                               endpoint="/v1/chat/completions", completion_window="24h",
                                               metadata=None, output_expires_after=None, window_seconds=3600)
            await files.delete_file(conn, "p", fid)
        assert await _pieces(pool, fid) > 0
        assert (await validate_batch(pool, state.id, chunk_size=2)).status == "failed"
        assert await _pieces(pool, fid) == 0
    _go(url, scenario)
