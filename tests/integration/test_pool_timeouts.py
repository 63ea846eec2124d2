"""Pools with timeouts (eventbatch/pool.py): the server-side limits of each kind, and the client-side
bound of an API call, which a stalled server cannot stretch."""

from __future__ import annotations

import asyncio
import time

import pytest

from eventbatch import db, pool


@pytest.mark.parametrize("kind", sorted(pool.PROFILES))
async def test_every_pool_has_statement_lock_and_idle_timeouts(database_url, kind):
    p = await db.create_pool(database_url, kind=kind, min_size=1, max_size=1)
    try:
        async with p.acquire() as conn:
            assert set(pool.PROFILES[kind]) == {"statement_timeout", "lock_timeout",
                                                "idle_in_transaction_session_timeout"}
            for name, value in pool.PROFILES[kind].items():
                ms = int(await conn.fetchval("SELECT setting FROM pg_settings WHERE name = $1", name))
                assert ms == int(value.removesuffix("s")) * 1000, (kind, name, ms)
                # none is off, but the operator's statements (a migration's index, a rebuild's fold)
                assert ms > 0 or (kind, name) == ("operator", "statement_timeout"), (kind, name)
    finally:
        await p.close()


async def test_the_api_pool_waits_for_uploads_longer_than_their_read_timeout(database_url):
    p = await db.create_pool(database_url, kind="api", min_size=1, max_size=1,
                             server_settings=pool.api_profile(upload_read_timeout=300))
    try:
        assert await p.fetchval("SELECT setting FROM pg_settings WHERE name = 'idle_in_transaction_session_timeout'") \
            == "330000"
    finally:
        await p.close()


async def test_an_api_call_waits_on_the_database_for_a_bounded_time(database_url):
    p = await db.create_pool(database_url, kind="api", min_size=1, max_size=2)
    try:
        with pool.bounded_waits(0.5):
            t0 = time.monotonic()
            with pytest.raises(pool.DatabaseStalled):
                async with p.acquire() as conn:
                    await conn.fetchval("SELECT pg_sleep(3)")
            assert time.monotonic() - t0 < 1.5
            assert pool.unavailable(pool.DatabaseStalled("x"))
            # the cut connection is gone, the pool is not
            assert await p.fetchval("SELECT 1") == 1
            # background work started from the call is not bounded
            assert await asyncio.get_running_loop().create_task(
                p.fetchval("SELECT pg_sleep(0.8) IS NOT NULL"), context=pool.background_context())
            # a pool with no connection to spare: the wait for one is bounded too
            held = [await p.acquire(), await p.acquire()]
            t0 = time.monotonic()
            with pytest.raises(pool.DatabaseStalled):
                await p.acquire()
            assert time.monotonic() - t0 < 1.5
            for c in held:
                await p.release(c)
        assert await p.fetchval("SELECT pg_sleep(0.8) IS NOT NULL")   # outside an API call: unbounded
    finally:
        await p.close()


async def test_a_worker_stalled_inside_a_transaction_frees_its_locks_within_seconds(database_url):
    """Its session is ended by idle_in_transaction_session_timeout: what it locked is free again."""
    stalled = await db.create_pool(database_url, kind="worker", min_size=1, max_size=1)
    other = await db.create_pool(database_url, kind="worker", min_size=1, max_size=1)
    try:
        conn = await stalled.acquire()
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT pg_advisory_xact_lock(7311459999)")
        t0 = time.monotonic()
        # ... and now it does nothing (a paused process)
        assert await other.fetchval("SELECT pg_advisory_lock(7311459999) IS NOT NULL")
        waited = time.monotonic() - t0
        assert waited < 15, waited
        await other.execute("SELECT pg_advisory_unlock(7311459999)")
        with pytest.raises(Exception):
            await conn.fetchval("SELECT 1")   # its session is gone
        await stalled.release(conn)
    finally:
        await stalled.close()
        await other.close()
