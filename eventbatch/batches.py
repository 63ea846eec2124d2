"""Commands on batches: lock the batch, ask the pure domain (batch.py) what happens, append its
events together with the view in one transaction. The transitions of a batch's end (expiry,
cancellation, completion) are in worker/finalizer.py; its validation in worker/validating.py."""

from __future__ import annotations

import math
import time
from typing import Callable

import asyncpg
import structlog

from . import batch as domain
from . import events as ev
from . import ids, projections, store, webhooks
from .batch import BatchState
from .sql import Q
from .store import NotFound

log = structlog.get_logger("eventbatch")


class BadInputFile(Exception):
    """The input file named by a create is unknown to the project, deleted, or not a batch file."""


async def transition(conn: asyncpg.Connection, batch_id: str,
                     decide: Callable[[BatchState], list[ev.Event]]) -> tuple[BatchState, list[ev.Event]]:
    """Lock the batch, decide, append, update the view: one transaction."""
    async with conn.transaction():
        state = await projections.lock_batch(conn, batch_id)
        if state is None:
            raise NotFound(batch_id)
        new = decide(state)
        if new:
            state = await append(conn, state, new)
        return state, new


async def append(conn: asyncpg.Connection, state: BatchState, new: list[ev.Event]) -> BatchState:
    """Append batch-level events to a batch whose view row the caller holds locked, with what
    they bring along in the same transaction: the view, the work queue, the wake-up, and the
    webhook deliveries owed when the batch ends (every terminal event passes here)."""
    was_open = not state.terminal
    await store.append(conn, store.batch_stream(state.id), state.version, new, batch_id=state.id)
    state = domain.fold(state, new)
    if was_open and state.terminal:
        await webhooks.owe_deliveries(conn, state, at=new[-1].at)
    await projections.save_batch(conn, state)
    for e in new:
        if isinstance(e, ev.BatchValidated):
            await _enqueue_chunks(conn, state, e.chunks)
    if any(isinstance(e, (ev.BatchStarted, ev.BatchCancelling)) for e in new):
        await conn.execute(Q.batch_notify, state.id)
    return state


async def _enqueue_chunks(conn: asyncpg.Connection, state: BatchState, chunks: list[ev.ChunkPlan]) -> None:
    # Enqueued in the transaction that records the validation: the work exists iff it commits.
    await conn.copy_records_to_table(
        "work_chunks", records=[(state.id, n, c.first_index, c.count, c.byte_start, c.byte_end)
                                for n, c in enumerate(chunks)],
        columns=["batch_id", "chunk_no", "first_index", "count", "byte_start", "byte_end"])
    if state.status in domain.RUNNABLE and chunks:
        # Its place in the fair-share rotation (migrations/010): by project and model, since the
        # model decides the provider. A batch validated after a cancel never runs: no place.
        model = state.model or ""
        await conn.execute(Q.work_project_join, state.project, model)
        await conn.execute(Q.work_batch_join, state.id, state.project, model,
                           float(state.expires_at) if state.expires_at is not None else math.inf)


async def lock_views_for_create(conn: asyncpg.Connection) -> None:
    """First in a transaction that creates a batch: batch_view before file_view, the lock order
    of sql/views.sql (a rebuild takes both), though a create has no batch row to lock yet."""
    await conn.execute(Q.batch_view_lock_for_create)


async def create_batch(conn: asyncpg.Connection, *, project: str, input_file_id: str, endpoint: str,
                       completion_window: str, metadata: dict[str, str] | None,
                       output_expires_after: int | None, window_seconds: float,
                       retry_of: str | None = None) -> BatchState:
    now = time.time()
    bid = ids.batch_id()
    event = ev.BatchCreated(batch_id=bid, project=project, input_file_id=input_file_id, endpoint=endpoint,
                            completion_window=completion_window, at=now,
                            expires_at=int(now + window_seconds), metadata=metadata,
                            output_expires_after=output_expires_after, retry_of=retry_of)
    async with conn.transaction():
        await lock_views_for_create(conn)
        # Share-locked: a concurrent delete of the file waits for this batch to exist (and then
        # keeps the bytes the batch reads), instead of removing them under it.
        f = await projections.share_own_file(conn, input_file_id, project)
        if f is None or f.expired(now):
            raise BadInputFile(f"No file found with id '{input_file_id}'. Upload it with purpose 'batch' first.")
        if f.purpose != "batch":
            raise BadInputFile(f"File '{f.id}' has purpose '{f.purpose}'; a batch needs a file uploaded with "
                               "purpose 'batch'.")
        [seq] = await store.append(conn, store.batch_stream(bid), 0, [event], batch_id=bid)
        state = domain.evolve(None, event)
        await projections.save_batch(conn, state, seq)
    log.info("batch_created", batch_id=bid, project=project)
    return state


async def cancel_batch(conn: asyncpg.Connection, batch_id: str) -> BatchState:
    state, new = await transition(conn, batch_id, lambda s: domain.cancel(s, time.time()))
    if new:
        log.info("batch_cancelling", batch_id=batch_id)
    return state
