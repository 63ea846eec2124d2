"""The event store: append with an expected version, read a batch's events in pages.

Streams are named 'batch-<id>' and 'file-<id>' (message-db style category-id); a request's
terminal outcome is stream 'batch-<id>/<index>' at version 1.

Ordering: every append that touches a batch first locks that batch's view row (see
projections.lock_batch), so the events of one batch are assigned positions in commit order and
a reader that follows one batch by position (replay, the SSE feed) never skips one.
The statements are in sql/events.sql.
"""

from __future__ import annotations

from typing import AsyncIterator, Sequence

import asyncpg

from . import events as ev
from .metrics import EVENTS_APPENDED
from .sql import Q


class StreamConflict(Exception):
    """Another writer appended to the stream first; retry on fresh state."""


class NotFound(Exception):
    """No such batch or file (for the caller's project)."""


def batch_stream(batch_id: str) -> str:
    return f"batch-{batch_id}"


def file_stream(file_id: str) -> str:
    return f"file-{file_id}"


# data is the event's stored form (events.stored: its JSON, compressed when large), size the
# JSON's length (migrations/070).
OUTCOME_COLUMNS = ["stream", "version", "type", "data", "size", "batch_id", "request_index", "summary"]


async def append(conn: asyncpg.Connection, stream: str, expected_version: int, events: Sequence[ev.Event],
                 *, batch_id: str | None = None) -> list[int]:
    """Append events at versions expected_version+1…; StreamConflict if that version is taken."""
    if not events:
        return []
    n = len(events)
    json = [ev.encode(e) for e in events]
    try:
        rows = await conn.fetch(
            Q.event_append, [stream] * n, list(range(expected_version + 1, expected_version + n + 1)),
            [ev.type_tag(e) for e in events], [ev.stored(j) for j in json], [len(j) for j in json],
            [batch_id] * n)
    except asyncpg.UniqueViolationError as exc:
        raise StreamConflict(f"stream {stream} moved past version {expected_version}") from exc
    EVENTS_APPENDED.inc(amount=n)
    return [r["position"] for r in rows]


async def append_outcomes(conn: asyncpg.Connection, batch_id: str,
                          outcomes: Sequence[ev.RequestSucceeded | ev.RequestFailed]) -> set[int]:
    """Record terminal request outcomes; returns the indexes actually recorded (those already
    settled by someone else, e.g. a worker that held the lease before, are dropped).

    The caller holds the batch's view row lock (every writer of a batch's outcomes does), so the
    settled set cannot change between the look and the COPY; the unique index on (batch_id,
    request_index) stays the last word: a duplicate fails the transaction, never lands.
    COPY rather than INSERT … ON CONFLICT: about twice the events per second."""
    if not outcomes:
        return set()
    settled = {r[0] for r in await conn.fetch(Q.outcome_settled_among, batch_id, [o.index for o in outcomes])}
    stream = batch_stream(batch_id)
    records, recorded = [], set()
    for o in outcomes:
        if o.index not in settled:
            settled.add(o.index)  # and the first of two outcomes for one request wins
            recorded.add(o.index)
            json = ev.encode(o)
            records.append((f"{stream}/{o.index}", 1, ev.type_tag(o), ev.stored(json), len(json), batch_id,
                            o.index, ev.summarize(o)))
    if records:
        await conn.copy_records_to_table("events", records=records, columns=OUTCOME_COLUMNS)
    EVENTS_APPENDED.inc(amount=len(records))
    return recorded


async def settled_indexes(conn: asyncpg.Connection, batch_id: str, start: int, end: int) -> set[int]:
    return {r[0] for r in await conn.fetch(Q.outcome_settled_in_range, batch_id, start, end)}


PAGE_BYTES = 4 << 20     # of event JSON per page of a batch's events


async def batch_events_page(conn: asyncpg.Connection, batch_id: str, *, after: int, limit: int,
                            max_bytes: int = PAGE_BYTES) -> list[asyncpg.Record]:
    """One page of a batch's events in log order: position, type, data (stored form),
    recorded_at, and n, how many `limit` would have given (more than came: cut by bytes)."""
    return await conn.fetch(Q.batch_events_page, batch_id, after, limit, max_bytes)


def more_after(rows: Sequence[asyncpg.Record], limit: int) -> bool:
    """Whether events follow a page read with `limit`: it is full, or its bytes cut it short."""
    return bool(rows) and (len(rows) >= limit or len(rows) < rows[0]["n"])


async def read_batch_events(conn: asyncpg.Connection, batch_id: str, *, after: int = 0,
                            page: int = 500) -> AsyncIterator[asyncpg.Record]:
    """Every event of a batch in log order, fetched in pages (bounded memory: rows and bytes)."""
    while True:
        rows = await batch_events_page(conn, batch_id, after=after, limit=page)
        for r in rows:
            yield r
        if not more_after(rows, page):
            return
        after = rows[-1]["position"]


async def batch_in_log(conn: asyncpg.Connection, batch_id: str) -> bool:
    return await conn.fetchval(Q.batch_in_log, batch_id) is not None


def iter_outcomes_in_input_order(conn: asyncpg.Connection, batch_id: str, prefetch: int = 100):
    """Every terminal outcome of a batch (stored form: events.plain gives its JSON) by request
    index; inside a transaction."""
    return conn.cursor(Q.outcome_all_in_input_order, batch_id, prefetch=prefetch)
