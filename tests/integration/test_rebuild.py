"""`projections rebuild` against a real Postgres, in process, with writers going on: it folds into
shadow tables without stopping them, catches up, swaps under a short lock, in bounded memory,
and never deadlocks a create (SPEC §6; issue 10, "Rebuild vs create")."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import chat_line, jsonl, with_pool
from eventbatch import api_keys, batch as domain, batches, events as ev, files, projections, rebuild, store
from eventbatch.worker.finalizer import settle_batch
from eventbatch.worker.validating import validate_batch


async def _upload(conn, data: bytes, project: str = "p") -> str:
    async def pieces():
        yield data
    async with conn.transaction():
        fid, size = await files.store_upload(conn, pieces())
        await files.record_upload(conn, file_id=fid, project=project, filename="in.jsonl", purpose="batch",
                                  size=size, expires_after=None)
    return fid


async def _create(conn, fid: str, project: str = "p") -> str:
    state = await batches.create_batch(conn, project=project, input_file_id=fid, endpoint="/v1/chat/completions",
                                       completion_window="24h", metadata={"k": "v"}, output_expires_after=None,
                                       window_seconds=3600)
    return state.id


def _outcome(i: int) -> ev.RequestSucceeded | ev.RequestFailed:
    if i % 5 == 4:
        return ev.RequestFailed(index=i, custom_id=f"req-{i}", status_code=400, body=ev.NULL, attempts=[])
    return ev.RequestSucceeded(index=i, custom_id=f"req-{i}", status_code=200, body=ev.NULL, attempts=[],
                               usage=ev.Usage(input_tokens=i, output_tokens=2, total_tokens=i + 2))


async def _record(conn, batch_id: str, indexes: range) -> None:
    """Outcomes recorded the way the recorder does: the batch locked, appended, the view saved."""
    async with conn.transaction():
        state = await projections.lock_batch(conn, batch_id)
        outs = [_outcome(i) for i in indexes]
        recorded = await store.append_outcomes(conn, batch_id, outs)
        await projections.save_batch(conn, domain.fold(state, [o for o in outs if o.index in recorded]))


async def _run_to_the_end(pool, conn, batch_id: str, n: int) -> None:
    await validate_batch(pool, batch_id, chunk_size=max(1, n // 2))
    await _record(conn, batch_id, range(n))
    await conn.execute("UPDATE work_chunks SET done = true WHERE batch_id = $1", batch_id)
    state = await settle_batch(pool, batch_id)
    assert state.status == "completed", state.status


def _go(url: str, scenario, size: int = 12):
    return with_pool(url, scenario, size)


@pytest.fixture
def url(fresh_db):
    return fresh_db().url


async def _history(pool, batches_n: int, requests: int) -> list[str]:
    """A log to fold: finished batches and running ones, each with its outcomes."""
    ids = []
    async with pool.acquire() as conn:
        fid = await _upload(conn, jsonl(chat_line(i) for i in range(requests)))
        for b in range(batches_n):
            bid = await _create(conn, fid)
            if b % 3:
                await _run_to_the_end(pool, conn, bid, requests)
            else:
                await validate_batch(pool, bid, chunk_size=requests)
                await _record(conn, bid, range(requests // 2))
            ids.append(bid)
    return ids


def test_rebuild_with_writers_going_on_equals_a_fresh_fold(url):
    """Creates, outcomes, completions and keys go on through the whole rebuild; none fails, they get
    work done while it folds (nothing holds them for more than a moment); the catch-up folds
    what they appended; a tampered row is corrected and
    nothing the writers wrote is lost: the views equal a fresh fold after."""
    async def scenario(pool):
        running = await _history(pool, 24, 40)
        async with pool.acquire() as conn:       # and a long one, for the fold to take a while
            big = await _create(conn, await _upload(conn, jsonl(chat_line(i) for i in range(20_000))))
            await validate_batch(pool, big, chunk_size=1000)
            await _record(conn, big, range(20_000))
        tampered = (await pool.fetchrow("SELECT id FROM batch_view WHERE status = 'completed' LIMIT 1"))["id"]
        await pool.execute("UPDATE batch_view SET status = 'failed' WHERE id = $1", tampered)
        stop = asyncio.Event()
        done_during: list[float] = []

        async def writer(w: int) -> int:
            n = 0
            async with pool.acquire() as conn:
                fid = await _upload(conn, jsonl(chat_line(i) for i in range(6)))
                while not stop.is_set():
                    bid = await _create(conn, fid)
                    if n % 2:
                        await _run_to_the_end(pool, conn, bid, 6)
                    else:
                        target = running[(w + n) % len(running)]
                        state = await projections.get_batch(conn, target)
                        first = state.request_counts.completed + state.request_counts.failed
                        if first < 40:
                            await _record(conn, target, range(first, min(first + 3, 40)))
                    if n % 3 == 0:      # and the third view: a key made and revoked
                        key = await api_keys.create_key(conn, f"p{w}")
                        key_id, _ = await api_keys.authenticate(conn, key)
                        await api_keys.revoke_key(conn, key_id)
                    done_during.append(time.perf_counter())
                    n += 1
            return n

        writers = [asyncio.create_task(writer(w)) for w in range(4)]
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        result = await rebuild.rebuild(pool, max_views=6, swap_below=50)
        t1 = time.perf_counter()
        stop.set()
        counts = await asyncio.gather(*writers)       # a writer that failed raises here
        assert sum(counts) > 0
        during = [t for t in done_during if t0 < t < t1]
        # The writers were not stopped: they finished work all through the rebuild, none of it
        # waited anything like the rebuild's time, and the catch-up folded what they wrote.
        assert len(during) >= 5, (len(during), t1 - t0)
        assert len(result.rounds) >= 2 and sum(result.rounds[1:]) > 0, result.rounds
        assert result.longest_hold < 2.0
        assert result.replaced >= 1 and result.peak <= 6
        async with pool.acquire() as conn:
            _, diffs = await rebuild.verify(conn)
        assert diffs == []
        assert await pool.fetchval("SELECT status FROM batch_view WHERE id = $1", tampered) == "completed"
    _go(url, scenario)


def test_rebuilds_and_many_creates_at_once_never_deadlock(url):
    """Rebuilds started together with many creates on one input file: every create and every
    rebuild succeeds (before: the rebuild locked batch_view then file_view, a create the other
    way round, and the deadlock detector aborted one of them: a user's create was a 500)."""
    async def scenario(pool):
        async with pool.acquire() as conn:
            fid = await _upload(conn, jsonl(chat_line(i) for i in range(3)))
            for _ in range(20):
                await _create(conn, fid)
        made = []

        async def creator():
            async with pool.acquire() as conn:
                for _ in range(8):
                    made.append(await _create(conn, fid))

        async def rebuilder():
            for _ in range(4):
                await rebuild.rebuild(pool, swap_below=0)
        await asyncio.gather(rebuilder(), *(creator() for _ in range(8)))
        assert len(made) == 64
        async with pool.acquire() as conn:
            assert (await rebuild.verify(conn))[1] == []
    _go(url, scenario, size=16)


def test_writers_take_the_views_in_the_documented_order(url):
    """Whoever locks batch_view then file_view (sql/views.sql's order; the rebuild's cut and
    swap do), with no lock_timeout to give way, never deadlocks a create or a finalizer."""
    async def scenario(pool):
        async with pool.acquire() as conn:
            fid = await _upload(conn, jsonl(chat_line(i) for i in range(3)))
        stop = asyncio.Event()

        async def locker():
            async with pool.acquire() as conn:
                while not stop.is_set():
                    async with conn.transaction():
                        await conn.execute("LOCK TABLE batch_view IN EXCLUSIVE MODE")
                        await asyncio.sleep(0.02)       # creates that began meanwhile wait here
                        await conn.execute("LOCK TABLE file_view IN EXCLUSIVE MODE")
                    await asyncio.sleep(0.005)

        async def creator():
            async with pool.acquire() as conn:
                for i in range(10):
                    bid = await _create(conn, fid)
                    if i % 3 == 0:
                        await _run_to_the_end(pool, conn, bid, 3)
        lock_task = asyncio.create_task(locker())
        try:
            await asyncio.gather(*(creator() for _ in range(6)))
        finally:
            stop.set()
            await lock_task               # a deadlock aborted either side: it raises here
    _go(url, scenario)


def test_memory_stays_within_the_bound_and_evicted_views_are_read_back(url):
    """Many batches, each created first and given its outcomes later, folded with room for 10
    views: never more than 10 in memory, the open ones read back from the shadow for their
    later events, and both rebuild and verify agree with the live views."""
    async def scenario(pool):
        async with pool.acquire() as conn:
            fid = await _upload(conn, jsonl(chat_line(i) for i in range(4)))
            ids = [await _create(conn, fid) for _ in range(60)]
            for bid in ids:
                await validate_batch(pool, bid, chunk_size=2)
            for bid in ids:
                await _record(conn, bid, range(2))
            for bid in ids[::2]:
                await _record(conn, bid, range(2, 4))
                await conn.execute("UPDATE work_chunks SET done = true WHERE batch_id = $1", bid)
                assert (await settle_batch(pool, bid)).status == "completed"
            folded, diffs = await rebuild.verify(conn, max_views=10)
        assert diffs == [] and folded.rows["batch"] == 60
        result = await rebuild.rebuild(pool, max_views=10)
        assert result.peak <= 10
        assert result.corrected == 0 and result.rows["batch"] == 60
        unbounded = await rebuild.rebuild(pool)
        assert unbounded.peak > 60          # the bound is what kept it at 10
    _go(url, scenario)


def test_outcomes_recorded_before_the_usage_column_fold_from_their_data(url):
    """An outcome without the usage column (recorded before migrations/060) folds its usage from
    the event itself: the rebuilt view keeps the tokens."""
    async def scenario(pool):
        async with pool.acquire() as conn:
            fid = await _upload(conn, jsonl(chat_line(i) for i in range(2)))
            bid = await _create(conn, fid)
            await validate_batch(pool, bid, chunk_size=2)
            await _record(conn, bid, range(1))
            old = _outcome(1)
            async with conn.transaction():
                state = await projections.lock_batch(conn, bid)
                await conn.copy_records_to_table(
                    "events", columns=["stream", "version", "type", "data", "batch_id", "request_index"],
                    records=[(f"batch-{bid}/1", 1, "request_succeeded", ev.encode(old), bid, 1)])
                await projections.save_batch(conn, domain.evolve(state, old))
            before = await projections.get_batch(conn, bid)
            assert before.usage.input_tokens == 1 and before.usage.total_tokens == 5
        result = await rebuild.rebuild(pool)
        assert result.corrected == 0
        async with pool.acquire() as conn:
            assert await projections.get_batch(conn, bid) == before
    _go(url, scenario)


def test_the_due_times_are_rebuilt_and_the_sweepers_bookkeeping_kept(url):
    """batch_due is a table of the batch view (views.py): a wrong or missing due time is put
    right, a row with no history goes, and next_at (the sweepers' own, not the log's) is left
    as it is where the due time was right."""
    async def scenario(pool):
        async with pool.acquire() as conn:
            fid = await _upload(conn, jsonl(chat_line(i) for i in range(2)))
            a, b, c = [await _create(conn, fid) for _ in range(3)]
        due = {r["batch_id"]: r["due_at"] for r in await pool.fetch("SELECT batch_id, due_at FROM batch_due")}
        await pool.execute("UPDATE batch_due SET next_at = next_at + 60 WHERE batch_id = $1", a)   # a sweeper's
        await pool.execute("UPDATE batch_due SET due_at = 1 WHERE batch_id = $1", b)               # wrong
        await pool.execute("DELETE FROM batch_due WHERE batch_id = $1", c)                         # lost
        await pool.execute("INSERT INTO batch_due VALUES ('batch_nobody', 1, 1)")                  # no history
        async with pool.acquire() as conn:
            _, diffs = await rebuild.verify(conn)
        assert sorted(d.split(":")[0] for d in diffs) == sorted([f"batch {b}", f"batch {c}", "batch batch_nobody"])
        result = await rebuild.rebuild(pool)
        assert (result.replaced, result.added, result.removed) == (1, 1, 1)
        rows = {r["batch_id"]: r for r in await pool.fetch("SELECT * FROM batch_due")}
        assert rows.keys() == {a, b, c}
        assert rows[a]["next_at"] == due[a] + 60 and rows[b]["due_at"] == due[b] == rows[b]["next_at"]
        async with pool.acquire() as conn:
            assert (await rebuild.verify(conn))[1] == []
    _go(url, scenario)
