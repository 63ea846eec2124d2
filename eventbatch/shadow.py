"""Shadow views: the log folded into TEMP tables beside the views, in bounded memory.

`projections rebuild` and `--verify` (rebuild.py) fold with the inline projection's own
functions (views.py), so a rebuilt view cannot differ from a live one by a rule written twice.
At most `max_views` states are held in memory: past that, the folded ones are written to the
shadow tables and let go of (the settled ones first: a finished batch, a deleted file), and a
state that gets another event afterwards is read back from its shadow row. The statements are
sql/rebuild.sql's templates.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import asyncpg

from .sql import Q
from .views import VIEWS, Table, View, tables

DEFAULT_MAX_VIEWS = 20_000          # about 40 MB of batch states at most
PAGE = 2_000                        # events fetched at a time (and a progress report)
_LAST = 2 ** 63 - 1                 # the end of the log, for a range without an upper bound


def shadow_table(table: Table) -> str:
    return table.name + "_next"


def sql(name: str, table: Table | None = None, locked: tuple[Table, ...] = ()) -> str:
    """A template of sql/rebuild.sql filled with a registered table's names (never input)."""
    text = getattr(Q, name)
    if table is not None:
        text = (text.replace("{view}", table.name).replace("{shadow}", shadow_table(table))
                .replace("{recheck}", table.name + "_recheck").replace("{key}", table.key)
                .replace("{fresh}", ", ".join("s." + c for c in table.decided))
                .replace("{live}", ", ".join("v." + c for c in table.decided)))
    if locked:
        text = text.replace("{views}", ", ".join(t.name for t in locked))
    return text


class _Held:
    """One state in memory: the seq of its first event, whether the shadow has its rows and
    whether it changed since they were last written."""
    __slots__ = ("seq", "state", "stored", "dirty")

    def __init__(self, seq: int, state: Any, stored: bool) -> None:
        self.seq, self.state, self.stored, self.dirty = seq, state, stored, True


class Shadow:
    """The shadow tables of `views` on one connection (TEMP tables live with their session)."""

    def __init__(self, conn: asyncpg.Connection, views: tuple[View, ...] = VIEWS, *,
                 max_views: int = DEFAULT_MAX_VIEWS) -> None:
        if max_views < 2:
            raise ValueError("max_views must be at least 2")
        self.conn, self.views, self.max_views = conn, views, max_views
        self.tables = tables(views)
        self.held: dict[str, dict[str, _Held]] = {v.noun: {} for v in views}
        self._routes: dict[str, list[tuple[View, dict[str, _Held]]]] = {}
        for v in views:
            self._routes.setdefault(v.category, []).append((v, self.held[v.noun]))
        self.in_memory = 0          # states held now, of every view
        self.peak = 0               # the most ever held at once: never above max_views
        self.events = 0             # events folded so far
        self.recheck = False        # while set, every key written is also noted for the swap

    async def create(self) -> None:
        """Empty shadow tables (outside a read-only transaction: CREATE is refused in one)."""
        for t in self.tables:
            await self._drop(t)
            await self.conn.execute(sql("shadow_create", t))
            await self.conn.execute(sql("shadow_key", t))
            await self.conn.execute(sql("recheck_create", t))

    async def drop(self) -> None:
        for t in self.tables:
            await self._drop(t)

    async def _drop(self, t: Table) -> None:
        await self.conn.execute(sql("shadow_drop", t))
        await self.conn.execute(sql("recheck_drop", t))

    async def fold(self, after: int, upto: int | None = None,
                   progress: Callable[[int], None] | None = None) -> int:
        """Fold the events at positions in (after, upto] (to the end: upto None), in position
        order; inside a transaction (a cursor). Returns how many were folded."""
        n = 0
        routes = self._routes
        # Pages fetched from a cursor by hand: iterating one row at a time costs a fifth more.
        cursor = await self.conn.cursor(Q.event_range_for_fold, after, _LAST if upto is None else upto)
        while page := await cursor.fetch(PAGE):
            for pos, stream, etype, data, summary in page:
                for view, held in routes.get(stream[:stream.find("-")], ()):
                    key = view.key_of(stream)
                    h = held.get(key)
                    if h is None:
                        if etype in view.starts and self.in_memory < self.max_views:
                            h = held[key] = _Held(pos, None, stored=False)      # the common case, inline
                            self.in_memory += 1
                            self.peak = max(self.peak, self.in_memory)
                        else:
                            h = await self._take(view, key, etype, pos)
                    h.state = view.evolve(h.state, view.decode(etype, data, summary))
                    h.dirty = True
            n += len(page)
            if progress is not None:
                progress(self.events + n)
        self.events += n
        if progress is not None:
            progress(self.events)
        return n

    async def _take(self, view: View, key: str, etype: str, pos: int) -> _Held:
        """Bring a state into memory: new (its first event), or read back from its shadow row."""
        if self.in_memory >= self.max_views:
            await self.flush(release=True)
        if etype in view.starts:
            h = _Held(pos, None, stored=False)
        else:
            row = await self.conn.fetchrow(sql("shadow_get", view.tables[0]), key)
            if row is None:
                raise RuntimeError(f"the log is not a history of {view.noun} {key}: its {etype} event "
                                   "comes before any event that begins it")
            h = _Held(row["seq"], view.state_of(row["doc"]), stored=True)
            h.dirty = False
        self.held[view.noun][key] = h
        self.in_memory += 1
        self.peak = max(self.peak, self.in_memory)
        return h

    async def flush(self, release: bool = False) -> None:
        """Write the rows of every state changed since its last write to the shadow tables; with
        release, also let go of states until half the room is free, the settled ones first."""
        for view in self.views:
            dirty = [(k, h) for k, h in self.held[view.noun].items() if h.dirty]
            if not dirty:
                continue
            again = [k for k, h in dirty if h.stored]
            for t in view.tables:
                if again:
                    await self.conn.execute(sql("shadow_forget", t), again)
                rows = [r for _, h in dirty if (r := t.row(h.seq, h.state)) is not None]
                if rows:
                    await self.conn.copy_records_to_table(shadow_table(t), records=rows, columns=t.columns,
                                                          schema_name="pg_temp")
                if self.recheck:
                    await self.conn.execute(sql("recheck_add", t), [k for k, _ in dirty])
            for _, h in dirty:
                h.stored, h.dirty = True, False
        if release:
            self._release(self.max_views // 2)

    def _release(self, room: int) -> None:
        for view in self.views:
            held = self.held[view.noun]
            for k in [k for k, h in held.items() if view.settled(h.state)]:
                del held[k]
                self.in_memory -= 1
        # Still too many open ones: the oldest go too (read back if they get another event).
        for view in self.views:
            held = self.held[view.noun]
            for k in list(itertools.islice(held, max(0, self.in_memory - (self.max_views - room)))):
                del held[k]
                self.in_memory -= 1

    async def rows(self) -> dict[str, int]:
        """How many states of each view the shadow holds (after a flush: every one folded)."""
        return {v.noun: await self.conn.fetchval(sql("shadow_count", v.tables[0])) for v in self.views}
