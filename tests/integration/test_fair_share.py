"""Fair share of the work queue (SPEC §11), against a real Postgres, in process: claims go
round-robin across projects, then across a project's batches, earliest expires_at first; each
provider's claim takes only the batches routed to it; and a claim costs the same whatever the
backlog."""

from __future__ import annotations

import asyncio
import collections

import asyncpg

from conftest import make_running_batch, run
from eventbatch.worker import queue
from eventbatch.worker.fairshare import FairSlots
from eventbatch.worker.providers import Provider, route_of
from eventbatch.worker.queue import EVERY_MODEL


async def _pool(url: str) -> asyncpg.Pool:
    return await asyncpg.create_pool(url, min_size=1, max_size=4)


def test_claims_take_turns_across_projects_then_batches_earliest_expiry_first(fresh_db):
    iso = fresh_db()

    async def go():
        pool = await _pool(iso.url)
        try:
            # Project A's four big batches first, the later ones expiring sooner; then B's small one.
            a = [await make_running_batch(pool, "proj-a", 40, chunk_size=4, window_seconds=1000 - 100 * i)
                 for i in range(4)]
            b = await make_running_batch(pool, "proj-b", 8, chunk_size=4)
            rows = await queue.claim(pool, "w1", 6, 30, EVERY_MODEL)
            order = [r["batch_id"] for r in rows]
            # A project at a time: B's batch gets every other chunk, not a turn after all of A's.
            projects = ["b" if x == b else "a" for x in order]
            assert projects[:4].count("b") == 2 and set(projects[:2]) == {"a", "b"}, projects
            # Within A, each batch in turn, the one expiring first first.
            a_order = [x for x in order if x != b]
            assert a_order[:4] == list(reversed(a)), (a_order, a)
            # One more claim each: B's batch is fully leased, so A's batches go on in rotation.
            more = [r["batch_id"] for r in await queue.claim(pool, "w2", 4, 30, EVERY_MODEL)]
            assert more == list(reversed(a)), more
        finally:
            await pool.close()
    run(go())


def test_a_claim_for_one_provider_takes_only_the_batches_routed_to_it(fresh_db):
    iso = fresh_db()
    small = Provider(name="small", base_url="http://127.0.0.1:1/v1", models=["small-model"])
    rest = Provider(name="rest", base_url="http://127.0.0.1:2/v1")
    providers = [small, rest]

    async def go():
        pool = await _pool(iso.url)
        try:
            s = await make_running_batch(pool, "proj", 8, chunk_size=4, model="small-model")
            r = await make_running_batch(pool, "proj", 8, chunk_size=4, model="big-model")
            got_small = {x["batch_id"] for x in await queue.claim(pool, "w", 10, 30, route_of(providers, small))}
            got_rest = {x["batch_id"] for x in await queue.claim(pool, "w", 10, 30, route_of(providers, rest))}
            assert got_small == {s} and got_rest == {r}
            # skip_projects leaves a project out (a worker that is full takes only new projects)
            t = await make_running_batch(pool, "proj-t", 4, chunk_size=4, model="big-model")
            u = await make_running_batch(pool, "proj-u", 4, chunk_size=4, model="big-model")
            got = [x["batch_id"] for x in await queue.claim(pool, "w", 10, 30, route_of(providers, rest),
                                                             skip_projects={"proj-t"})]
            assert got == [u], (got, t, u)
        finally:
            await pool.close()
    run(go())


def test_expired_and_closed_batches_are_not_claimed(fresh_db):
    iso = fresh_db()

    async def go():
        pool = await _pool(iso.url)
        try:
            gone = await make_running_batch(pool, "proj", 4, chunk_size=4, window_seconds=1)
            await asyncio.sleep(1.1)
            assert await queue.claim(pool, "w", 4, 30, EVERY_MODEL) == []
            async with pool.acquire() as conn, conn.transaction():
                await queue.close_all(conn, gone)
            assert await pool.fetchval("SELECT count(*) FROM work_batches") == 0
            # the project, empty now, leaves the rotation at the next claim that looks at it
            assert await queue.claim(pool, "w", 4, 30, EVERY_MODEL) == []
            assert await pool.fetchval("SELECT count(*) FROM work_projects") == 0
        finally:
            await pool.close()
    run(go())


async def _claim_buffers(pool) -> int:
    """Shared buffers one claim of one chunk touches (the function's statements included)."""
    plan = await pool.fetchval(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM work_claim('probe', 1, 30, '{in_progress}', '{}', "
        "true, '{}', '{}')")
    import json
    node = json.loads(plan)[0]["Plan"]
    return node["Shared Hit Blocks"] + node["Shared Read Blocks"]


def test_a_claim_costs_the_same_with_ten_times_the_backlog(fresh_db):
    iso = fresh_db()

    async def go():
        pool = await _pool(iso.url)
        try:
            for p in range(10):
                for _ in range(5):
                    await make_running_batch(pool, f"proj-{p}", 40, chunk_size=4)
            small = [await _claim_buffers(pool) for _ in range(5)]
            for p in range(10):
                for _ in range(45):
                    await make_running_batch(pool, f"proj-{p}", 40, chunk_size=4)
            big = [await _claim_buffers(pool) for _ in range(5)]
            # 50 → 500 open batches (2,000 → 20,000 open chunks): the same handful of index pages.
            assert max(big) <= 2 * max(small) + 10, (small, big)
            # and the plans of the steps are index scans that stop at the first row
            for sql in ("EXPLAIN SELECT project FROM work_projects ORDER BY turn LIMIT 1",
                        "EXPLAIN SELECT batch_id FROM work_batches WHERE project = 'proj-1' AND model = '' "
                        "ORDER BY turn, expires_at LIMIT 32",
                        "EXPLAIN SELECT chunk_no FROM work_chunks WHERE batch_id = 'x' AND NOT done "
                        "ORDER BY chunk_no LIMIT 1"):
                async with pool.acquire() as conn:   # the SET and the EXPLAIN on one session
                    await conn.execute("SET enable_seqscan = off")   # tiny tables: ask what the index gives
                    text = "\n".join(r[0] for r in await conn.fetch(sql))
                    await conn.execute("RESET enable_seqscan")
                assert "Index" in text and "Sort" not in text, text
        finally:
            await pool.close()
    run(go())


def test_fair_slots_give_a_newcomer_its_share_at_once():
    """In a worker: a batch of project B claimed behind project A's held requests gets the slots
    that free until both have as many in flight, then they take turns; not after A's queue."""
    async def go():
        slots = FairSlots(4)
        order: list[str] = []
        running: list[asyncio.Event] = []

        async def request(project: str, batch: str) -> None:
            done = asyncio.Event()
            async with slots.slot(project, batch, 100.0):
                order.append(project)
                running.append(done)
                await done.wait()

        async def finish_one() -> None:
            running.pop(0).set()
            for _ in range(3):
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(request("A", "a1")) for _ in range(20)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(request("B", "b1")) for _ in range(4)]
        await asyncio.sleep(0)
        assert order == ["A"] * 4 and slots.waiting == 20
        for _ in range(4):
            await finish_one()
        # A had 4 in flight, B none: B takes the next two; then the two have two each, and A, whose
        # requests finish first here, gets its slots back.
        assert order[4:8] == ["B", "B", "A", "A"], order
        while running:
            await finish_one()
        await asyncio.gather(*tasks)
        assert slots.busy == 0 and slots.waiting == 0

        # A waiter cancelled while it waits gives nothing back twice and blocks nobody.
        hold = asyncio.Event()

        async def holder() -> None:
            async with slots.slot("A", "a1", 1.0):
                await hold.wait()
        holders = [asyncio.create_task(holder()) for _ in range(4)]
        await asyncio.sleep(0)
        waiter = asyncio.create_task(holder())
        await asyncio.sleep(0)
        waiter.cancel()
        hold.set()
        await asyncio.gather(*holders, waiter, return_exceptions=True)
        assert slots.busy == 0 and slots.waiting == 0
    asyncio.run(go())
