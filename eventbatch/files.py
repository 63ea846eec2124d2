"""Commands on files: record an upload, delete a file. The bytes themselves move through
blobs.py; the file's existence is its `file_created` event and its view."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import asyncpg
import structlog

from . import blobs, events as ev, ids, projections, store
from .projections import FileView
from .store import NotFound
from .sql import Q
from .validation import MAX_FILE_BYTES

log = structlog.get_logger("eventbatch")
PURGE_PER_PASS = 100


async def create_file(conn: asyncpg.Connection, event: ev.FileCreated) -> FileView:
    [seq] = await store.append(conn, store.file_stream(event.file_id), 0, [event])
    view = projections.evolve_file(None, event)
    await projections.save_file(conn, view, seq)
    return view


async def store_upload(pool: asyncpg.Pool, chunks: AsyncIterator[bytes],
                       slots: asyncio.Semaphore | None = None) -> tuple[str, int]:
    """Stream uploaded bytes into storage under a new file id, each piece in a short transaction
    of its own as it arrives (a slow client holds no transaction and no connection while it
    sends); raises blobs.TooLarge past the limit.

    The pieces name no file yet: the file exists only once record_upload's file_created event
    commits. An upload that fails here drops its pieces at once; one that never reaches
    record_upload is dropped by discard_upload, or else by blobs.delete_orphans later."""
    fid = ids.file_id()
    writer = blobs.BlobWriter(pool, fid, max_bytes=MAX_FILE_BYTES, slots=slots)
    try:
        async for chunk in chunks:
            await writer.write(chunk)
        return fid, await writer.close()
    except BaseException:
        await discard_upload(pool, fid)
        raise


async def discard_upload(pool: asyncpg.Pool, file_id: str) -> None:
    """Drop the pieces of an upload that will not become a file. Best effort: what cannot be
    dropped now (the database is away) is an orphan that blobs.delete_orphans drops later."""
    try:
        await asyncio.shield(blobs.delete_blob(pool, file_id))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        pass


async def record_upload(conn: asyncpg.Connection, *, file_id: str, project: str, filename: str, purpose: str,
                        size: int, expires_after: int | None) -> FileView:
    now = time.time()
    return await create_file(conn, ev.FileCreated(
        file_id=file_id, project=project, filename=filename, purpose=purpose, bytes=size, at=now,
        expires_at=int(now) + expires_after if expires_after else None))


async def delete_file(conn: asyncpg.Connection, project: str, file_id: str) -> None:
    async with conn.transaction():
        view = await projections.lock_own_file(conn, file_id, project)
        if view is None:
            raise NotFound(file_id)
        event = ev.FileDeleted(file_id=file_id, at=time.time())
        await store.append(conn, store.file_stream(file_id), view.version, [event])
        await projections.save_file(conn, projections.evolve_file(view, event))
        # The bytes go unless a batch that has not finished still reads them (the last such
        # batch drops them when it ends: its free_input_if_unused waits for this row's lock, so
        # it sees the delete, and this one sees any batch that ended before it).
        if view.purpose != "batch" or not await input_in_use(conn, project, file_id):
            await blobs.delete_blob(conn, file_id)


async def input_in_use(conn: asyncpg.Connection, project: str, file_id: str, but: str | None = None) -> bool:
    """Does a batch of the project that has not finished (other than `but`) read this file?"""
    return any(b.input_file_id == file_id for b in await projections.unfinished_batches_of_project(conn, project, but))


async def free_input_if_unused(conn: asyncpg.Connection, state) -> None:
    """An input file deleted while its batch ran kept its bytes for it; they go when the last
    batch reading it ends. Called in the transaction that ends the batch, with the batch locked:
    the file's row is locked next (batch_view before file_view, sql/views.sql), so the batches
    of one file and its delete decide one after the other, each seeing the others' ends."""
    if await conn.fetchval(Q.file_view_lock_deleted, state.input_file_id) \
            and not await input_in_use(conn, state.project, state.input_file_id, but=state.id):
        await blobs.delete_blob(conn, state.input_file_id)


async def purge_expired_inputs(pool: asyncpg.Pool, now: float | None = None) -> int:
    """Due work (run with the sweeper's): the stored bytes of input files past their expires_at
    go, not only out of sight (SPEC §12.5). A file that a batch still running reads keeps them
    until that batch ends (a later pass takes it). Several processes may run this at once: each
    file is locked, and skipped by the others. Returns how many files were purged."""
    now = time.time() if now is None else now
    purged = 0
    try:
        async with pool.acquire() as conn, conn.transaction():
            for doc in [r[0] for r in await conn.fetch(Q.file_view_purge_due, int(now), PURGE_PER_PASS)]:
                view = projections.decode_file(doc)
                if await input_in_use(conn, view.project, view.id):
                    continue
                event = ev.FileBytesPurged(file_id=view.id, at=now)
                await store.append(conn, store.file_stream(view.id), view.version, [event])
                await projections.save_file(conn, projections.evolve_file(view, event))
                await blobs.delete_blob(conn, view.id)
                purged += 1
    except (asyncpg.PostgresError, OSError) as exc:
        # Due work: the next pass tries again.
        log.warning("input_purge_failed", error=type(exc).__name__)
        return 0
    if purged:
        log.info("input_files_purged", files=purged)
    return purged
