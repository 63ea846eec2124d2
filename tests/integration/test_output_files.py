"""Output and error files as projections (SPEC §12.5), against a real Postgres in process:
closing a batch writes no bytes, the files' `bytes` are the fold's sums, and a view folded
before the fold kept sizes is measured from the log when its batch closes."""

from __future__ import annotations

import time

import msgspec
import pytest

from conftest import chat_line, jsonl, with_pool as _go
from eventbatch import batch as domain, batches, events as ev, files, projections, rebuild, result_lines, results, store
from eventbatch.worker import queue
from eventbatch.worker.finalizer import settle_batch
from eventbatch.worker.validating import validate_batch


async def _running_batch(pool, n: int) -> str:
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
    await validate_batch(pool, state.id, 4)
    return state.id


def _outcome(i: int) -> ev.Event:
    if i % 3 == 0:
        return ev.RequestFailed(index=i, custom_id=f"req-{i}", status_code=400, request_id=f"req_{i}",
                                body=msgspec.Raw(b'{"error":{"message":"no","type":"invalid_request_error"}}'))
    return ev.RequestSucceeded(index=i, custom_id=f"req-{i}", status_code=200, request_id=f"req_{i}", attempts=[],
                               body=msgspec.Raw(msgspec.json.encode({"answer": "ü" * i})))


async def _record(pool, batch_id: str, outcomes: list[ev.Event], *, forget_sizes: bool = False) -> None:
    async with pool.acquire() as conn, conn.transaction():
        state = await projections.lock_batch(conn, batch_id)
        recorded = await store.append_outcomes(conn, batch_id, outcomes)
        state = domain.fold(state, [o for o in outcomes if o.index in recorded])
        if forget_sizes:      # a view written before the fold kept sizes
            state = msgspec.structs.replace(state, output_bytes=None, error_bytes=None)
        await projections.save_batch(conn, state)
        await conn.execute("UPDATE work_chunks SET done = true WHERE batch_id = $1", batch_id)


@pytest.fixture
def url(fresh_db):
    return fresh_db().url


async def _files_of(pool, state) -> dict[str, tuple[int, bytes]]:
    out = {}
    async with pool.acquire() as conn:
        for fid in (state.output_file_id, state.error_file_id):
            view = await projections.get_file(conn, fid, "p")
            data = b"".join([p async for p in results.file_pages(pool, state.id, view.results)])
            out[view.results] = (view.bytes, data)
    return out


@pytest.mark.parametrize("forget_sizes", [False, True])
def test_closing_writes_no_bytes_and_knows_the_sizes(url, forget_sizes):
    async def scenario(pool):
        bid = await _running_batch(pool, 12)
        await _record(pool, bid, [_outcome(i) for i in range(12)], forget_sizes=forget_sizes)
        blobs_before = await pool.fetchval("SELECT count(*) FROM file_blobs")
        t0 = time.perf_counter()
        state = await settle_batch(pool, bid, 4)
        assert state.status == "completed" and time.perf_counter() - t0 < 5
        assert await pool.fetchval("SELECT count(*) FROM file_blobs") == blobs_before
        got = await _files_of(pool, state)
        assert set(got) == {"succeeded", "failed"}
        for kind, (size, data) in got.items():
            assert size == len(data) and data.count(b"\n") == (8 if kind == "succeeded" else 4)
        async with pool.acquire() as conn:
            assert not await queue.any_open(conn, bid)
            _, diffs = await rebuild.verify(conn)     # the sizes measured equal a fresh fold's
        assert diffs == []
    _go(url, scenario)


def _ten_answers(text: str) -> list[ev.RequestSucceeded]:
    body = msgspec.Raw(msgspec.json.encode({"answer": text}))
    return [ev.RequestSucceeded(index=i, custom_id=f"req-{i}", status_code=200, request_id=f"req_{i}",
                                attempts=[], body=body) for i in range(10)]


def test_large_outcomes_are_stored_compressed_and_pages_count_their_json(url):
    """A large answer is a zstd frame in the log (migrations/070), and a page's byte budget
    counts the JSON it will send, not the frames: 100 kB answers of one repeated word are frames
    of a few hundred bytes, and a budget of 250 kB must still cut the file into pages of 3."""
    outcomes = _ten_answers("same " * 20_000)

    async def scenario(pool):
        bid = await _running_batch(pool, 10)
        await _record(pool, bid, outcomes)
        rows = await pool.fetch("SELECT size, octet_length(data) AS stored FROM events "
                                "WHERE batch_id = $1 AND request_index IS NOT NULL", bid)
        assert len(rows) == 10 and all(r["size"] > 100_000 and r["stored"] < r["size"] // 50 for r in rows)
        state = await settle_batch(pool, bid, 4)
        whole = b"".join([p async for p in results.file_pages(pool, bid, "succeeded")])
        pages = [p async for p in results.file_pages(pool, bid, "succeeded", page_bytes=250_000)]
        async with pool.acquire() as conn:
            assert len(whole) == (await projections.get_file(conn, state.output_file_id, "p")).bytes
        assert b"".join(pages) == whole
        assert [p.count(b"\n") for p in pages] == [3, 3, 3, 1]
        assert whole.splitlines()[4] == result_lines.output_line(bid, outcomes[4]).rstrip(b"\n")
        top = await results.last_position(pool, bid)
        recorded = [p async for p in results.recorded_pages(pool, bid, after=0, upto=top, kind=None,
                                                          page_bytes=250_000)]
        assert [p.count(b"\n") for p in recorded] == [3, 3, 3, 1]
    _go(url, scenario)


def test_a_batchs_event_pages_are_bounded_by_bytes_too(url):
    """The events feed and replay read a batch's events in pages of rows and of bytes (the JSON's,
    store.PAGE_BYTES): ten 1 MB answers do not come in one page of 10 MB."""
    outcomes = _ten_answers("word " * 200_000)

    async def scenario(pool):
        bid = await _running_batch(pool, 10)
        await _record(pool, bid, outcomes)
        async with pool.acquire() as conn:
            everything = [r async for r in store.read_batch_events(conn, bid)]
            page = await store.batch_events_page(conn, bid, after=0, limit=100, max_bytes=2_500_000)
            one = await store.batch_events_page(conn, bid, after=0, limit=100, max_bytes=1)
        # created, validated, started, then the ten outcomes: all of them, once, in log order
        assert [r["type"] for r in everything].count("request_succeeded") == 10
        assert [r["position"] for r in everything] == sorted({r["position"] for r in everything})
        outcomes_on_page = [r for r in page if r["type"] == "request_succeeded"]
        assert 1 <= len(outcomes_on_page) <= 3 and store.more_after(page, 100)
        assert len(one) == 1 and store.more_after(one, 100)          # at least one event moves
        last = await store.batch_events_page(pool, bid, after=everything[-2]["position"], limit=100)
        assert len(last) == 1 and not store.more_after(last, 100)
    _go(url, scenario)
