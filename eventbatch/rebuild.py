"""`eventbatch projections rebuild [--verify]`: every view recomputed from the log alone.

The fold is the one the inline projection uses (batch.evolve, projections.evolve_file): a
rebuilt view cannot differ from a live one by a rule written twice."""

from __future__ import annotations

import sys
import time
from typing import Callable

import asyncpg
import msgspec

from . import events as ev
from .batch import BatchState, due_at, evolve
from .projections import FileView, decode_batch, decode_file, evolve_file
from .api_keys import KeyView, decode_key, evolve_key, key_row
from . import db
from .config import Settings
from .sql import Q



class _OutcomeLite(msgspec.Struct):
    """What a view needs of a request outcome: its kind, usage and the size of its result line
    (so the body, passed through as raw bytes); the rebuild skips decoding the attempts."""
    index: int
    custom_id: str
    body: msgspec.Raw = ev.NULL
    status_code: int | None = None
    request_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    usage: ev.Usage = ev.Usage()


_outcome_dec = msgspec.json.Decoder(_OutcomeLite)
_enc = msgspec.json.Encoder()
_OUTCOME_TYPES = {"request_succeeded", "request_failed"}


def _lite_outcome(etype: str, data: bytes) -> ev.Event:
    o = _outcome_dec.decode(data)
    if etype == "request_succeeded":
        return ev.RequestSucceeded(index=o.index, custom_id=o.custom_id, status_code=o.status_code or 200,
                                   body=o.body, attempts=[], request_id=o.request_id, usage=o.usage)
    return ev.RequestFailed(index=o.index, custom_id=o.custom_id, status_code=o.status_code, body=o.body,
                            request_id=o.request_id, error_code=o.error_code, error_message=o.error_message)


class Folded(msgspec.Struct):
    batches: dict[str, tuple[int, BatchState]]
    files: dict[str, tuple[int, FileView]]
    events: int
    keys: dict[str, tuple[int, KeyView]] = {}


async def fold_log(conn: asyncpg.Connection, progress: Callable[[int, int], None] | None = None) -> Folded:
    """Fold every event of the log, in position order, into fresh views (must run inside a
    transaction: it reads with a cursor)."""
    total = await conn.fetchval(Q.event_count)
    batches: dict[str, tuple[int, BatchState]] = {}
    files: dict[str, tuple[int, FileView]] = {}
    keys: dict[str, tuple[int, KeyView]] = {}
    n = 0
    async for pos, stream, etype, data in conn.cursor(Q.event_all_in_order, prefetch=1000):
        n += 1
        if etype in _OUTCOME_TYPES:
            # The same evolve as the inline projection, fed an outcome without its attempts:
            # the view needs the outcome's kind, usage and line size.
            batch_id = stream[len("batch-"):stream.rindex("/")]
            seq, state = batches[batch_id]
            batches[batch_id] = (seq, evolve(state, _lite_outcome(etype, data)))
        elif stream.startswith("batch-"):
            batch_id = stream[len("batch-"):]
            seq, state = batches.get(batch_id, (pos, None))
            batches[batch_id] = (seq, evolve(state, ev.decode(data)))
        elif stream.startswith("file-"):
            file_id = stream[len("file-"):]
            seq, view = files.get(file_id, (pos, None))
            files[file_id] = (seq, evolve_file(view, ev.decode(data)))
        elif stream.startswith("key-"):
            key_id = stream[len("key-"):]
            seq, view = keys.get(key_id, (pos, None))
            keys[key_id] = (seq, evolve_key(view, ev.decode(data)))
        # other categories (webhook deliveries) have no views
        if progress and n % 10000 == 0:
            progress(n, total)
    if progress:
        progress(n, total)
    return Folded(batches=batches, files=files, events=n, keys=keys)


def _batch_row(seq: int, s: BatchState) -> tuple:
    return (s.id, s.project, seq, s.status, s.version, _enc.encode(s))


def _due_rows(folded: "Folded") -> list[tuple]:
    return [(s.id, due, due) for _, s in folded.batches.values() if (due := due_at(s)) is not None]


def _file_row(seq: int, f: FileView) -> tuple:
    return (f.id, f.project, seq, f.purpose, f.deleted, f.version, f.expires_at, f.purge_after, _enc.encode(f))


async def rebuild(conn: asyncpg.Connection, progress=None) -> Folded:
    """Replace every view with a fresh fold of the log, in one transaction.

    EXCLUSIVE locks let readers go on reading the old views while appends (which all write a
    view row) wait; the new views appear atomically at commit, and no event can slip in between
    the fold and the swap."""
    async with conn.transaction():
        await conn.execute(Q.view_lock_for_rebuild)
        folded = await fold_log(conn, progress)
        await conn.execute(Q.batch_view_delete_all)
        await conn.execute(Q.file_view_delete_all)
        await conn.execute(Q.key_view_delete_all)
        await conn.copy_records_to_table(
            "batch_view", records=[_batch_row(seq, s) for seq, s in folded.batches.values()],
            columns=["id", "project", "seq", "status", "version", "doc"])
        # batch_due, the sweepers' index of due times, is a projection too (SPEC §11).
        await conn.execute(Q.batch_due_delete_all)
        await conn.copy_records_to_table("batch_due", records=_due_rows(folded),
                                         columns=["batch_id", "due_at", "next_at"])
        await conn.copy_records_to_table(
            "file_view", records=[_file_row(seq, f) for seq, f in folded.files.values()],
            columns=["id", "project", "seq", "purpose", "deleted", "version", "expires_at", "purge_after", "doc"])
        await conn.copy_records_to_table(
            "api_keys", records=[key_row(seq, k) for seq, k in folded.keys.values()],
            columns=["id", "project", "seq", "revoked", "version", "doc"])
    return folded


async def verify(conn: asyncpg.Connection, progress=None) -> tuple[Folded, list[str]]:
    """Fold the log and compare with the live views in one snapshot; returns the differences."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        folded = await fold_log(conn, progress)
        live_b = {r["id"]: r for r in await conn.fetch(Q.batch_view_all)}
        live_f = {r["id"]: r for r in await conn.fetch(Q.file_view_all)}
        live_k = {r["id"]: r for r in await conn.fetch(Q.key_view_all)}
        live_due = {r["batch_id"]: r["due_at"] for r in await conn.fetch(Q.batch_due_all)}
    diffs: list[str] = []
    fresh_due = {batch_id: due for batch_id, due, _ in _due_rows(folded)}
    for id_ in sorted(fresh_due.keys() | live_due.keys()):
        if fresh_due.get(id_) != live_due.get(id_):
            diffs.append(f"batch {id_}: due time differs (batch_due={live_due.get(id_)!r} log={fresh_due.get(id_)!r})")
    for kind, fresh, live, row_of, dec in (
            ("batch", folded.batches, live_b, _batch_row, decode_batch),
            ("file", folded.files, live_f, _file_row, decode_file),
            ("key", folded.keys, live_k, key_row, decode_key)):
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


# --- the command ---------------------------------------------------------------------------

class _Progress:
    """The fold's progress on stderr: events folded, out of how many, rate, ETA. A live rich bar
    on a terminal; elsewhere (logs, CI) a plain line every few seconds and one at the end."""

    PLAIN_EVERY_SECONDS = 5.0

    def __init__(self) -> None:
        self.start = self._last = time.perf_counter()
        self._bar = None
        self._live = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self._live:
            self._draw(done, total)
            return
        now = time.perf_counter()
        if done < total and now - self._last < self.PLAIN_EVERY_SECONDS:
            return
        self._last = now
        rate = done / max(now - self.start, 1e-9)
        pct = 100.0 * done / total if total else 100.0
        bar = "#" * int(30 * pct / 100)
        sys.stderr.write(f"folding events [{bar:<30}] {done}/{total} ({pct:5.1f}%) {rate:,.0f} events/s\n")
        sys.stderr.flush()

    def _draw(self, done: int, total: int) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeRemainingColumn)
        if self._bar is None:
            self._bar = Progress(TextColumn("folding events"), BarColumn(), MofNCompleteColumn(),
                                 TaskProgressColumn(), TextColumn("{task.fields[rate]} events/s"),
                                 TimeRemainingColumn(), console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task("fold", total=total, rate="-")
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        self._bar.update(self._task, completed=done, total=total, rate=f"{rate:,.0f}")
        if done >= total:
            self._bar.stop()
            self._bar = None


async def rebuild_command(settings: Settings, *, verify_only: bool) -> int:
    pool = await db.open_database(settings, max_size=1)
    try:
        async with pool.acquire() as conn:
            if verify_only:
                folded, diffs = await verify(conn, _Progress())
                for d in diffs:
                    print(d)
                print(f"verified {len(folded.batches)} batch view(s) and {len(folded.files)} file view(s) "
                      f"against {folded.events} events: "
                      + (f"{len(diffs)} difference(s)." if diffs else "no differences."))
                return 1 if diffs else 0
            folded = await rebuild(conn, _Progress())
            print(f"rebuilt {len(folded.batches)} batch view(s) and {len(folded.files)} file view(s) "
                  f"from {folded.events} events.")
    finally:
        await pool.close()
    return 0
