"""Views of batches and files: folds of the log, written in the same transaction as the
events they come from (rebuilt from the log alone by rebuild.py). Statements: sql/views.sql."""

from __future__ import annotations

import time

import asyncpg
import msgspec

from . import events as ev
from .batch import OPEN as OPEN_STATUSES, BatchState, due_at
from .sql import Q


class FileView(msgspec.Struct, kw_only=True):
    id: str
    project: str
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: str = "processed"
    deleted: bool = False
    batch_id: str | None = None
    version: int = 0
    results: str | None = None       # derived from the batch's outcomes: 'succeeded' or 'failed'
    purged: bool = False             # its stored bytes are gone (expired input file)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @property
    def purge_after(self) -> int | None:
        """When the stored bytes of an input file are due to go (its expires_at), while they are
        still stored; None for any other file (the purge job's lookup column)."""
        if self.purpose != "batch" or self.purged or self.deleted:
            return None
        return self.expires_at


def evolve_file(state: FileView | None, event: ev.Event) -> FileView:
    match event:
        case ev.FileCreated():
            return FileView(id=event.file_id, project=event.project, bytes=event.bytes, created_at=int(event.at),
                            expires_at=event.expires_at, filename=event.filename, purpose=event.purpose,
                            batch_id=event.batch_id, results=event.results, version=1)
        case ev.FileDeleted():
            assert state is not None
            return msgspec.structs.replace(state, deleted=True, version=state.version + 1)
        case ev.FileBytesPurged():
            assert state is not None
            return msgspec.structs.replace(state, purged=True, version=state.version + 1)
    raise TypeError(f"not a file event: {type(event).__name__}")


_enc = msgspec.json.Encoder()
_batch_dec = msgspec.json.Decoder(BatchState)
_file_dec = msgspec.json.Decoder(FileView)


def decode_batch(doc: bytes) -> BatchState:
    return _batch_dec.decode(doc)


def decode_file(doc: bytes) -> FileView:
    return _file_dec.decode(doc)


# --- rows ------------------------------------------------------------------------------
# A view's row is written by one function, here, for the inline projection (save_*) and for
# `projections rebuild` alike (views.py); seq is the position of the event that began the row.

def batch_row(seq: int, s: BatchState) -> tuple:
    return (s.id, s.project, seq, s.status, s.version, _enc.encode(s))


def file_row(seq: int, f: FileView) -> tuple:
    return (f.id, f.project, seq, f.purpose, f.deleted, f.version, f.expires_at, _enc.encode(f), f.purge_after)


def due_row(seq: int, s: BatchState) -> tuple | None:
    """The batch's row in batch_due (batch_id, due_at, next_at), None once nothing will be due;
    next_at starts at due_at (the sweepers move it)."""
    due = due_at(s)
    return None if due is None else (s.id, due, due)


# --- reading and writing views ----------------------------------------------------------

async def lock_batch(conn: asyncpg.Connection, batch_id: str) -> BatchState | None:
    """The batch's view, row-locked until the transaction ends. Every append to a batch takes
    this lock first: writers of one batch are serialised, so its events commit in position order."""
    doc = await conn.fetchval(Q.batch_view_lock, batch_id)
    return None if doc is None else decode_batch(doc)


async def get_batch(conn, batch_id: str, project: str | None = None) -> BatchState | None:
    if project is None:
        doc = await conn.fetchval(Q.batch_view_get, batch_id)
    else:
        doc = await conn.fetchval(Q.batch_view_get_own, batch_id, project)
    return None if doc is None else decode_batch(doc)


async def batch_statuses(conn, batch_ids: list[str]) -> dict[str, str]:
    return {r["id"]: r["status"] for r in await conn.fetch(Q.batch_view_statuses, batch_ids)}


async def batch_status(conn, batch_id: str) -> str | None:
    """The batch's status alone (no decoding of the view), for callers that poll it."""
    return await conn.fetchval(Q.batch_view_status, batch_id)


async def save_batch(conn: asyncpg.Connection, state: BatchState, seq: int = 0,
                     before: BatchState | None = None) -> None:
    """The view, and its due time (batch_due, the sweepers' index). `before`: the view this one
    was folded from, when the caller has it; an unchanged due time is then not written again."""
    due = due_at(state)
    if before is not None and due_at(before) == due:
        await conn.execute(Q.batch_view_upsert, *batch_row(seq, state))
        return
    await conn.execute(Q.batch_view_upsert_due, *batch_row(seq, state), due)


async def save_file(conn: asyncpg.Connection, view: FileView, seq: int = 0) -> None:
    await conn.execute(Q.file_view_upsert, *file_row(seq, view))


async def get_file(conn, file_id: str, project: str) -> FileView | None:
    """The project's file, or None: unknown, another project's, deleted, or past its expires_at."""
    doc = await conn.fetchval(Q.file_view_get_own, file_id, project)
    view = None if doc is None else decode_file(doc)
    return None if view is None or view.expired(time.time()) else view




async def lock_own_file(conn, file_id: str, project: str) -> FileView | None:
    doc = await conn.fetchval(Q.file_view_lock_own, file_id, project)
    return None if doc is None else decode_file(doc)


async def share_own_file(conn, file_id: str, project: str) -> FileView | None:
    """The file, share-locked: it cannot be deleted before the transaction ends."""
    doc = await conn.fetchval(Q.file_view_share_own, file_id, project)
    return None if doc is None else decode_file(doc)


async def file_deleted(conn, file_id: str) -> bool:
    return bool(await conn.fetchval(Q.file_view_deleted, file_id))


async def unfinished_batches_of_project(conn, project: str, but: str | None = None) -> list[BatchState]:
    rows = await conn.fetch(Q.batch_view_project_docs_with_status, project, sorted(OPEN_STATUSES), but)
    return [decode_batch(r[0]) for r in rows]


async def batch_page(conn, project: str, after: str | None, limit: int) -> list[BatchState] | None:
    """Up to `limit` of the project's batches, newest first, after the batch `after`; None when
    `after` names no batch of the project."""
    after_seq = None
    if after is not None:
        after_seq = await conn.fetchval(Q.batch_view_seq_own, after, project)
        if after_seq is None:
            return None
    rows = await conn.fetch(Q.batch_view_page_own, project, after_seq, limit)
    return [decode_batch(r[0]) for r in rows]


async def file_page(conn, project: str, *, after: str | None, purpose: str | None, ascending: bool,
                    limit: int) -> list[FileView] | None:
    after_seq = None
    if after is not None:
        after_seq = await conn.fetchval(Q.file_view_seq_own, after, project)
        if after_seq is None:
            return None
    rows = await conn.fetch(Q.file_view_page_asc if ascending else Q.file_view_page_desc,
                            project, purpose, after_seq, limit, time.time())
    return [decode_file(r[0]) for r in rows]
