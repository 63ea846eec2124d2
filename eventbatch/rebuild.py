"""`eventbatch projections rebuild [--verify]`: every view recomputed from the log alone, while
the service goes on writing.

A rebuild folds the log into shadow tables (shadow.py) without holding any lock writers need,
then catches up with the events appended meanwhile, then swaps under a short lock:

1. a cut: with every view locked for a moment (in the lock order of sql/views.sql) no append
   is under way, so a snapshot taken then holds every event up to the log's last position and
   none after; the locks go at once and the fold of that snapshot runs with writers going on;
2. catch-up rounds, each a cut of its own, fold the events after the last one folded, until
   few are left;
3. the swap: the rows that differ found without a lock; then the views locked again, the last
   events folded, and those rows and the ones those events touched compared again and
   replaced where they differ, in one transaction: the lock lasts for the few rows, not for
   a comparison of every view.

Each lock is asked for under a lock_timeout below deadlock_timeout: were a writer to take the
views in another order, the rebuild gives way and tries again, the writer is never the one
aborted. `--verify` folds one snapshot and compares it with the views in that snapshot,
replacing nothing.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Callable

import asyncpg
import msgspec

from . import db
from .config import Settings
from .shadow import DEFAULT_MAX_VIEWS, Shadow, sql
from .views import VIEWS, Table, View, tables
from .sql import Q

COMPARE_WORK_MEM = "64MB"       # for the whole-view comparisons (a hash join of view and shadow)
Progress = Callable[[int, int, str], None]     # (events folded, out of about how many, doing what)


class RebuildBusy(Exception):
    """Writers held the views at every try for longer than the rebuild was allowed to wait."""


class Folded(msgspec.Struct):
    events: int
    rows: dict[str, int]        # by view noun: rows of the fresh fold


class Rebuilt(msgspec.Struct):
    events: int                 # folded in all
    rows: dict[str, int]        # by view noun: rows of the rebuilt view
    rounds: list[int]           # events folded by the fold, each catch-up, and the swap's catch-up
    replaced: int = 0           # view rows that differed from the log, now replaced
    removed: int = 0            # view rows with no history in the log, now gone
    added: int = 0              # rows the views lacked, now there
    peak: int = 0               # views held in memory at once, at most
    longest_hold: float = 0.0   # seconds: the longest a writer could have waited on the rebuild

    @property
    def corrected(self) -> int:
        return self.replaced + self.removed + self.added


class _Locking:
    """Asking for every view's lock, briefly, and giving way when writers hold them."""

    def __init__(self, views: tuple[View, ...], lock_wait: float, max_wait: float) -> None:
        self.tables, self.lock_wait, self.max_wait = tables(views), lock_wait, max_wait
        self.longest_hold = 0.0
        self._failing_since: float | None = None

    async def setup(self, conn: asyncpg.Connection) -> None:
        deadlock_ms = await conn.fetchval(Q.deadlock_timeout_ms)
        self.lock_wait = min(self.lock_wait, deadlock_ms / 2000)

    async def lock(self, conn: asyncpg.Connection) -> bool:
        """In conn's transaction: every view locked with no append under way. False when not
        within lock_wait (roll the transaction back then)."""
        await conn.execute(Q.lock_timeout_set, f"{max(1, int(self.lock_wait * 1000))}ms")
        try:
            await conn.execute(sql("views_lock_for_rebuild", locked=self.tables))
        except asyncpg.LockNotAvailableError:
            return False
        return not await conn.fetchval(Q.event_appenders_in_flight)

    def held(self, since: float) -> None:
        self.longest_hold = max(self.longest_hold, time.perf_counter() - since)

    async def gave_way(self) -> None:
        now = time.monotonic()
        self._failing_since = self._failing_since or now
        if now - self._failing_since > self.max_wait:
            raise RebuildBusy(f"writers held the views at every try for {self.max_wait:.0f} s; nothing was "
                              "replaced. Run the rebuild again when the service is less busy.")
        await asyncio.sleep(random.uniform(0.05, 0.25))

    def got(self) -> None:
        self._failing_since = None


async def rebuild(pool: asyncpg.Pool, *, progress: Progress | None = None, views: tuple[View, ...] = VIEWS,
                  max_views: int = DEFAULT_MAX_VIEWS, lock_wait: float = 0.5, max_wait: float = 300.0,
                  swap_below: int = 2000, max_rounds: int = 10) -> Rebuilt:
    """Rebuild the views from the log with writers going on; uses two connections of `pool`.

    lock_wait: the longest one try at the views' locks waits (writers queue behind it);
    max_wait: how long to go on trying; swap_below: swap once at most this many events are left
    to fold (or after max_rounds catch-ups); max_views: the views held in memory at most."""
    async with pool.acquire() as conn, pool.acquire() as helper:
        locking = _Locking(views, lock_wait, max_wait)
        await locking.setup(conn)
        shadow = Shadow(conn, views, max_views=max_views)
        await shadow.create()
        try:
            done, rounds = 0, []
            while True:
                if rounds:
                    behind = await conn.fetchval(Q.event_last_position) - done
                    if behind <= swap_below or len(rounds) > max_rounds:
                        result = await _swap(conn, shadow, locking, done, progress)
                        if result is not None:
                            rounds.append(shadow.events - sum(rounds))
                            result.rounds, result.longest_hold = rounds, locking.longest_hold
                            return result
                        await locking.gave_way()
                before = shadow.events
                done = await _round(conn, helper, shadow, locking, done, progress,
                                    "folding events" if not rounds else "catching up")
                rounds.append(shadow.events - before)
        finally:
            await shadow.drop()


async def _round(conn, helper, shadow: Shadow, locking: _Locking, after: int, progress: Progress | None,
                 label: str) -> int:
    """A cut, then the fold of the events after `after` up to it; returns the cut's position."""
    while True:
        t0 = time.perf_counter()
        cut = helper.transaction()
        await cut.start()
        snapshot = None
        try:
            if await locking.lock(helper):
                snapshot = conn.transaction(isolation="repeatable_read", readonly=True)
                await snapshot.start()
                # The snapshot is taken by this first statement, while no append is under way.
                upto = await conn.fetchval(Q.event_last_position)
        except BaseException:
            if snapshot is not None:
                await snapshot.rollback()
            raise
        finally:
            await cut.rollback()
            locking.held(t0)
        if snapshot is not None:
            locking.got()
            break
        await locking.gave_way()
    try:
        start = shadow.events
        total = start + (upto - after)
        await shadow.fold(after, upto, None if progress is None else lambda n: progress(n, max(n, total), label))
        if progress is not None:
            progress(shadow.events, shadow.events, label)       # positions have gaps: the end is now
        await shadow.flush()
        await snapshot.commit()
    except BaseException:
        await snapshot.rollback()
        raise
    return upto


async def _swap(conn, shadow: Shadow, locking: _Locking, after: int, progress: Progress | None) -> Rebuilt | None:
    """The views locked, the last events folded, the differing rows replaced; None if the locks
    did not come (nothing changed)."""
    async with conn.transaction():
        # Without the lock: which rows differ now (every view compared with its shadow).
        await conn.execute(Q.work_mem_set, COMPARE_WORK_MEM)
        for t in shadow.tables:
            await conn.execute(sql("recheck_clear", t))
            await conn.execute(sql("recheck_differing", t))
    t0 = time.perf_counter()
    tr = conn.transaction()
    await tr.start()
    try:
        if not await locking.lock(conn):
            await tr.rollback()
            return None
        locking.got()
        # From here on no rollback but on error: the shadow's memory follows this transaction.
        shadow.recheck = True
        await shadow.fold(after, None, None if progress is None else lambda n: progress(n, n, "swapping"))
        await shadow.flush()
        shadow.recheck = False
        result = Rebuilt(events=shadow.events, rows={}, rounds=[], peak=shadow.peak)
        for t in shadow.tables:
            gone = await conn.fetchrow(sql("view_swap_remove", t))
            added = await conn.fetchval(sql("view_swap_add", t))
            result.replaced += gone["replaced"]
            result.removed += gone["orphans"]
            result.added += added - gone["replaced"]
        result.rows = await shadow.rows()
        await tr.commit()
    except BaseException:
        await tr.rollback()
        raise
    finally:
        locking.held(t0)
    return result


# --- verify --------------------------------------------------------------------------------

async def verify(conn: asyncpg.Connection, progress: Progress | None = None, *, views: tuple[View, ...] = VIEWS,
                 max_views: int = DEFAULT_MAX_VIEWS) -> tuple[Folded, list[str]]:
    """Fold the log and compare with the live views in one snapshot; returns the differences."""
    shadow = Shadow(conn, views, max_views=max_views)
    await shadow.create()
    diffs: list[str] = []
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            top = await conn.fetchval(Q.event_last_position)
            await shadow.fold(0, None, None if progress is None else
                              lambda n: progress(n, max(n, top), "folding events"))
            if progress is not None:
                progress(shadow.events, shadow.events, "folding events")
            await shadow.flush()
            await conn.execute(Q.work_mem_set, COMPARE_WORK_MEM)
            rows = await shadow.rows()
            for view in views:
                for t in view.tables:
                    keys = [r["key"] for r in await conn.fetch(sql("shadow_differing_keys", t))]
                    for i in range(0, len(keys), 500):
                        diffs += await _differences(conn, view, t, keys[i:i + 500])
    finally:
        await shadow.drop()
    return Folded(events=shadow.events, rows=rows), diffs


async def _differences(conn, view: View, t: Table, keys: list[str]) -> list[str]:
    fresh = {r[t.key]: r for r in await conn.fetch(sql("shadow_rows", t), keys)}
    live = {r[t.key]: r for r in await conn.fetch(sql("view_rows", t), keys)}
    what, table = (t.label + " ", t.name) if t.label else ("", "the view")
    out = []
    for key in sorted(keys):
        f, v = fresh.get(key), live.get(key)
        if v is None:
            out.append(f"{view.noun} {key}: {what}in the log but missing from {table}")
        elif f is None:
            out.append(f"{view.noun} {key}: {what}in {table} but not in the log")
        else:
            columns = [c for c in t.decided if c != "doc" and f[c] != v[c]]
            fields: list[str] = []
            if "doc" in t.decided:
                # A doc is compared decoded: one written before a field was added has other
                # bytes for the same view.
                fresh_obj = msgspec.to_builtins(view.state_of(f["doc"]))
                live_obj = msgspec.to_builtins(view.state_of(v["doc"]))
                fields = sorted(k for k in fresh_obj.keys() | live_obj.keys() if fresh_obj.get(k) != live_obj.get(k))
            if not columns and not fields:
                continue
            detail = ", ".join([f"{k}: view={live_obj.get(k)!r} log={fresh_obj.get(k)!r}" for k in fields]
                               + [f"column {c}: view={v[c]!r} log={f[c]!r}" for c in columns if c not in fields])
            out.append(f"{view.noun} {key}: {what}differs ({detail})")
    return out


# --- the command ---------------------------------------------------------------------------

class _Progress:
    """The fold's progress on stderr: events folded, out of about how many, rate, what it is
    doing (folding, catching up, swapping). A live rich bar on a terminal; elsewhere (logs, CI)
    a plain line every few seconds and one at the end of each step."""

    PLAIN_EVERY_SECONDS = 5.0

    def __init__(self) -> None:
        self.start = self._last = time.perf_counter()
        self.label = ""
        self._printed: tuple[int, str] | None = None
        self._bar = None
        self._live = sys.stderr.isatty()

    def __call__(self, done: int, total: int, label: str) -> None:
        step_ended = label != self.label and self.label
        self.label = label
        if self._live:
            self._draw(done, total, label)
            return
        now = time.perf_counter()
        if (done < total and now - self._last < self.PLAIN_EVERY_SECONDS and not step_ended) \
                or (done, label) == self._printed:
            return
        self._last, self._printed = now, (done, label)
        rate = done / max(now - self.start, 1e-9)
        pct = 100.0 * done / total if total else 100.0
        bar = "#" * int(30 * pct / 100)
        sys.stderr.write(f"{label} [{bar:<30}] {done}/{total} ({pct:5.1f}%) {rate:,.0f} events/s\n")
        sys.stderr.flush()

    def _draw(self, done: int, total: int, label: str) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeRemainingColumn)
        if self._bar is None:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TaskProgressColumn(), TextColumn("{task.fields[rate]} events/s"),
                                 TimeRemainingColumn(), console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, rate="-")
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        self._bar.update(self._task, description=label, completed=done, total=total, rate=f"{rate:,.0f}")

    def end(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _counts(rows: dict[str, int]) -> str:
    return " and ".join(f"{n} {noun} view(s)" for noun, n in rows.items())


async def rebuild_command(settings: Settings, *, verify_only: bool) -> int:
    pool = await db.open_database(settings, max_size=2)
    bar = _Progress()
    try:
        if verify_only:
            async with pool.acquire() as conn:
                folded, diffs = await verify(conn, bar)
            bar.end()
            for d in diffs:
                print(d)
            print(f"verified {_counts(folded.rows)} against {folded.events} events: "
                  + (f"{len(diffs)} difference(s)." if diffs else "no differences."))
            return 1 if diffs else 0
        try:
            done = await rebuild(pool, progress=bar)
        except RebuildBusy as exc:
            bar.end()
            print(f"eventbatch: {exc}", file=sys.stderr)
            return 1
        bar.end()
        print(f"rebuilt {_counts(done.rows)} from {done.events} events "
              f"({len(done.rounds) - 1} catch-up(s), writers held at most {done.longest_hold * 1000:.0f} ms); "
              f"{done.corrected} row(s) corrected.")
    finally:
        await pool.close()
    return 0
