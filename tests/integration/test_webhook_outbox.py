"""The webhook outbox against a real Postgres in process (SPEC §12.4): a delivery owed while its
endpoint is being removed is dropped with the endpoint, never sent to it."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from conftest import with_pool as _go
from eventbatch import batch as domain, events as ev, webhooks


@pytest.fixture
def url(fresh_db):
    return fresh_db().url


def _ended_batch(project: str) -> domain.BatchState:
    created = ev.BatchCreated(batch_id="batch_race", project=project, input_file_id="file-x",
                              endpoint="/v1/chat/completions", completion_window="24h", at=1.0, expires_at=86401)
    return msgspec.structs.replace(domain.fold(None, [created]), status="completed")


def test_a_delivery_owed_while_its_endpoint_is_removed_is_dropped(url):
    async def scenario(pool):
        async with pool.acquire() as conn:
            endpoint_id, _ = await webhooks.add_endpoint(conn, "p", "http://127.0.0.1:9/hook", ["batch.completed"])
        ending = await pool.acquire()
        remover = await pool.acquire()
        try:
            # The batch's terminal transaction owes the delivery and has not committed yet …
            tx = ending.transaction()
            await tx.start()
            assert await webhooks.owe_deliveries(ending, _ended_batch("p"), 2.0) == 1
            # … when the operator removes the endpoint: the removal waits for it,
            removal = asyncio.create_task(webhooks.remove_endpoint(remover, endpoint_id))
            await asyncio.sleep(0.5)
            assert not removal.done()
            await tx.commit()
            # then finds the delivery it owes, and drops it.
            assert (await removal)["project"] == "p"
        finally:
            await pool.release(ending)
            await pool.release(remover)
        states = [r[0] for r in await pool.fetch("SELECT state FROM webhook_deliveries WHERE endpoint_id = $1",
                                                 endpoint_id)]
        assert states == ["dropped"]
    _go(url, scenario)
