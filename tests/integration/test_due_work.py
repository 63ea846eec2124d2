"""Due work (SPEC §11) against a real Postgres, in process: found by due time (batch_due, a
projection rebuilt with the views), each due batch to one sweeper, at a cost per pass that does
not grow with the open batches that are not due, and a slow batch holds only its own slot."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from conftest import make_running_batch, run
from eventbatch import projections, rebuild
from eventbatch.metrics import DUE_STATEMENTS
from eventbatch.worker.sweeper import Sweeper, open_pool


def _statements() -> float:
    return sum(DUE_STATEMENTS.values.values())


async def _status(pool, batch_id: str) -> str:
    return await pool.fetchval("SELECT status FROM batch_view WHERE id = $1", batch_id)


def test_a_pass_costs_the_same_whatever_the_open_batches_that_are_not_due(fresh_db):
    iso = fresh_db()

    async def go():
        pool = await open_pool(iso.url)
        try:
            sweeper = Sweeper(pool, 256)

            async def pass_cost() -> float:
                await sweeper.sweep()        # anything due at once (the validations) is done first
                before = _statements()
                await sweeper.sweep()
                return _statements() - before

            for _ in range(10):
                await make_running_batch(pool, "proj", 3)
            few = await pass_cost()
            for _ in range(300):
                await make_running_batch(pool, "proj", 3)
            many = await pass_cost()
            assert await pool.fetchval("SELECT count(*) FROM batch_view WHERE status = 'in_progress'") == 310
            # one statement finds what is due (nothing); the purge of expired input files is a
            # transaction of its own (begin, look, commit)
            assert few == many <= 4, (few, many)
            # ... and a batch that comes due is worked by the next pass
            soon = await make_running_batch(pool, "proj", 3, window_seconds=1)
            await asyncio.sleep(1.1)
            await sweeper.sweep()
            assert await _status(pool, soon) == "expired"
        finally:
            await pool.close()
    run(go())


def test_each_due_batch_goes_to_one_sweeper_and_a_stuck_one_holds_only_its_slot(fresh_db):
    iso = fresh_db()

    async def go():
        p1, p2 = await open_pool(iso.url), await open_pool(iso.url)
        blocker = await asyncpg.connect(iso.url)
        try:
            ids = [await make_running_batch(p1, f"proj-{i % 3}", 4, window_seconds=1) for i in range(9)]
            await asyncio.sleep(1.1)
            # One batch is stuck: its view row is locked (a stalled writer), so settling it waits.
            stuck = ids[0]
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM batch_view WHERE id = $1 FOR UPDATE", stuck)
            s1, s2 = Sweeper(p1, 256, concurrency=4), Sweeper(p2, 256, concurrency=4)
            t1, t2 = await asyncio.gather(s1.sweep_pass(), s2.sweep_pass())
            assert not set(t1) & set(t2) and len(t1) + len(t2) == 8, (t1, t2)   # disjoint, 4 slots each
            deadline = time.time() + 10
            while time.time() < deadline:
                await asyncio.gather(s1.sweep_pass(), s2.sweep_pass())
                if all([await _status(p1, b) == "expired" for b in ids[1:]]):
                    break
                await asyncio.sleep(0.2)
            assert [await _status(p1, b) for b in ids[1:]] == ["expired"] * 8
            assert await _status(p1, stuck) == "in_progress"
            await tx.rollback()
            deadline = time.time() + 10
            while await _status(p1, stuck) != "expired" and time.time() < deadline:
                await asyncio.sleep(0.2)
            assert await _status(p1, stuck) == "expired"
            # every request of an expired batch has its one outcome
            for b in ids:
                n = await p1.fetchval("SELECT count(*) FROM events WHERE batch_id = $1 AND request_index IS NOT NULL", b)
                assert n == 4
            assert await p1.fetchval("SELECT count(*) FROM batch_due WHERE batch_id = ANY($1::text[])", ids) == 0
            await s1.stop(), await s2.stop()
        finally:
            await blocker.close()
            await p1.close(), await p2.close()
    run(go())


def test_batch_due_is_a_projection_rebuilt_and_verified_with_the_views(fresh_db):
    iso = fresh_db()

    async def go():
        pool = await open_pool(iso.url)
        try:
            running = await make_running_batch(pool, "proj", 3)
            async with pool.acquire() as conn:
                state = await projections.get_batch(conn, running)
                assert await conn.fetchval("SELECT due_at FROM batch_due WHERE batch_id = $1", running) \
                    == state.expires_at
                _, diffs = await rebuild.verify(conn)
                assert diffs == []
                await conn.execute("UPDATE batch_due SET due_at = 1 WHERE batch_id = $1", running)
                await conn.execute("DELETE FROM batch_due WHERE batch_id <> $1", running)
                _, diffs = await rebuild.verify(conn)
                assert any(running in d and "due time" in d for d in diffs), diffs
                await rebuild.rebuild(pool)
                _, diffs = await rebuild.verify(conn)
                assert diffs == []
                assert await conn.fetchval("SELECT due_at FROM batch_due WHERE batch_id = $1", running) \
                    == state.expires_at
        finally:
            await pool.close()
    run(go())
