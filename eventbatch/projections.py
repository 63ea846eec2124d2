"""Views of batches and files: folds of the log, written in the same transaction as the
events they come from, and rebuilt from the log alone by `eventbatch projections rebuild`."""

from __future__ import annotations

import time
from typing import Callable

import asyncpg
import msgspec

from . import events as ev
from .batch import BatchState, evolve


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

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def evolve_file(state: FileView | None, event: ev.Event) -> FileView:
    match event:
        case ev.FileCreated():
            return FileView(id=event.file_id, project=event.project, bytes=event.bytes, created_at=int(event.at),
                            expires_at=event.expires_at, filename=event.filename, purpose=event.purpose,
                            batch_id=event.batch_id, version=1)
        case ev.FileDeleted():
            assert state is not None
            return msgspec.structs.replace(state, deleted=True, version=state.version + 1)
    raise TypeError(f"not a file event: {type(event).__name__}")


_enc = msgspec.json.Encoder()
_batch_dec = msgspec.json.Decoder(BatchState)
_file_dec = msgspec.json.Decoder(FileView)


def decode_batch(doc: bytes) -> BatchState:
    return _batch_dec.decode(doc)


def decode_file(doc: bytes) -> FileView:
    return _file_dec.decode(doc)


# --- reading and writing views ----------------------------------------------------------

async def lock_batch(conn: asyncpg.Connection, batch_id: str) -> BatchState | None:
    """The batch's view, row-locked until the transaction ends. Every append to a batch takes
    this lock first: writers of one batch are serialised, so its events commit in position order."""
    doc = await conn.fetchval("SELECT doc FROM batch_view WHERE id = $1 FOR UPDATE", batch_id)
    return None if doc is None else decode_batch(doc)


async def get_batch(conn, batch_id: str, project: str | None = None) -> BatchState | None:
    if project is None:
        doc = await conn.fetchval("SELECT doc FROM batch_view WHERE id = $1", batch_id)
    else:
        doc = await conn.fetchval("SELECT doc FROM batch_view WHERE id = $1 AND project = $2", batch_id, project)
    return None if doc is None else decode_batch(doc)


async def batch_status(conn, batch_id: str) -> str | None:
    """The batch's status alone (no decoding of the view), for callers that poll it."""
    return await conn.fetchval("SELECT status FROM batch_view WHERE id = $1", batch_id)


UPSERT_BATCH = """
INSERT INTO batch_view (id, project, seq, status, version, doc) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, version = EXCLUDED.version, doc = EXCLUDED.doc
"""
UPSERT_FILE = """
INSERT INTO file_view (id, project, seq, purpose, deleted, version, doc) VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO UPDATE SET deleted = EXCLUDED.deleted, version = EXCLUDED.version, doc = EXCLUDED.doc
"""


async def save_batch(conn: asyncpg.Connection, state: BatchState, seq: int = 0) -> None:
    await conn.execute(UPSERT_BATCH, state.id, state.project, seq, state.status, state.version, _enc.encode(state))


async def save_file(conn: asyncpg.Connection, view: FileView, seq: int = 0) -> None:
    await conn.execute(UPSERT_FILE, view.id, view.project, seq, view.purpose, view.deleted, view.version,
                       _enc.encode(view))


async def get_file(conn, file_id: str, project: str) -> FileView | None:
    """The project's file, or None: unknown, another project's, deleted, or past its expires_at."""
    doc = await conn.fetchval(
        "SELECT doc FROM file_view WHERE id = $1 AND project = $2 AND NOT deleted", file_id, project)
    view = None if doc is None else decode_file(doc)
    return None if view is None or view.expired(time.time()) else view


# --- rebuild ------------------------------------------------------------------------------

class _OutcomeLite(msgspec.Struct):
    """What a view needs of a request outcome: the rebuild skips decoding response bodies."""
    usage: ev.Usage = ev.Usage()


_outcome_dec = msgspec.json.Decoder(_OutcomeLite)
_OUTCOME_TYPES = {"request_succeeded", "request_failed"}


class Folded(msgspec.Struct):
    batches: dict[str, tuple[int, BatchState]]
    files: dict[str, tuple[int, FileView]]
    events: int


async def fold_log(conn: asyncpg.Connection, progress: Callable[[int, int], None] | None = None) -> Folded:
    """Fold every event of the log, in position order, into fresh views (must run inside a
    transaction: it reads with a cursor)."""
    total = await conn.fetchval("SELECT count(*) FROM events")
    batches: dict[str, tuple[int, BatchState]] = {}
    files: dict[str, tuple[int, FileView]] = {}
    n = 0
    async for pos, stream, etype, data in conn.cursor(
            "SELECT position, stream, type, data FROM events ORDER BY position", prefetch=1000):
        n += 1
        if etype in _OUTCOME_TYPES:
            batch_id = stream[len("batch-"):stream.rindex("/")]
            seq, state = batches[batch_id]
            rc = state.request_counts
            if etype == "request_succeeded":
                rc.completed += 1
                u, a = _outcome_dec.decode(data).usage, state.usage
                state.usage = ev.Usage(a.input_tokens + u.input_tokens, a.cached_tokens + u.cached_tokens,
                                       a.output_tokens + u.output_tokens, a.reasoning_tokens + u.reasoning_tokens,
                                       a.total_tokens + u.total_tokens)
            else:
                rc.failed += 1
        elif stream.startswith("batch-"):
            batch_id = stream[len("batch-"):]
            seq, state = batches.get(batch_id, (pos, None))
            batches[batch_id] = (seq, evolve(state, ev.decode(data)))
        elif stream.startswith("file-"):
            file_id = stream[len("file-"):]
            seq, view = files.get(file_id, (pos, None))
            files[file_id] = (seq, evolve_file(view, ev.decode(data)))
        # other categories (none yet) have no views
        if progress and n % 10000 == 0:
            progress(n, total)
    if progress:
        progress(n, total)
    return Folded(batches=batches, files=files, events=n)


def _batch_row(seq: int, s: BatchState) -> tuple:
    return (s.id, s.project, seq, s.status, s.version, _enc.encode(s))


def _file_row(seq: int, f: FileView) -> tuple:
    return (f.id, f.project, seq, f.purpose, f.deleted, f.version, _enc.encode(f))


async def rebuild(conn: asyncpg.Connection, progress=None) -> Folded:
    """Replace every view with a fresh fold of the log, in one transaction.

    EXCLUSIVE locks let readers go on reading the old views while appends (which all write a
    view row) wait; the new views appear atomically at commit, and no event can slip in between
    the fold and the swap."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE batch_view, file_view IN EXCLUSIVE MODE")
        folded = await fold_log(conn, progress)
        await conn.execute("DELETE FROM batch_view")
        await conn.execute("DELETE FROM file_view")
        await conn.copy_records_to_table(
            "batch_view", records=[_batch_row(seq, s) for seq, s in folded.batches.values()],
            columns=["id", "project", "seq", "status", "version", "doc"])
        await conn.copy_records_to_table(
            "file_view", records=[_file_row(seq, f) for seq, f in folded.files.values()],
            columns=["id", "project", "seq", "purpose", "deleted", "version", "doc"])
    return folded


async def verify(conn: asyncpg.Connection, progress=None) -> tuple[Folded, list[str]]:
    """Fold the log and compare with the live views in one snapshot; returns the differences."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        folded = await fold_log(conn, progress)
        live_b = {r["id"]: r for r in await conn.fetch("SELECT id, project, seq, status, version, doc FROM batch_view")}
        live_f = {r["id"]: r for r in await conn.fetch("SELECT id, project, seq, purpose, deleted, version, doc FROM file_view")}
    diffs: list[str] = []
    for kind, fresh, live, row_of, dec in (
            ("batch", folded.batches, live_b, _batch_row, decode_batch),
            ("file", folded.files, live_f, _file_row, decode_file)):
        for id_ in sorted(fresh.keys() - live.keys()):
            diffs.append(f"{kind} {id_}: in the log but missing from the view")
        for id_ in sorted(live.keys() - fresh.keys()):
            diffs.append(f"{kind} {id_}: in the view but not in the log")
        for id_ in sorted(fresh.keys() & live.keys()):
            seq, obj = fresh[id_]
            want = row_of(seq, obj)
            got = tuple(live[id_])
            if want[:-1] != got[:-1] or dec(got[-1]) != obj:
                live_obj = msgspec.to_builtins(dec(got[-1]))
                fresh_obj = msgspec.to_builtins(obj)
                fields = sorted(k for k in fresh_obj if fresh_obj.get(k) != live_obj.get(k))
                detail = ", ".join(f"{k}: view={live_obj.get(k)!r} log={fresh_obj.get(k)!r}" for k in fields)
                diffs.append(f"{kind} {id_}: differs ({detail or 'index columns'})")
    return folded, diffs
