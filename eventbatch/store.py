"""The event store: append with an expected version, read a batch's events in pages.

Streams are named 'batch-<id>' and 'file-<id>' (message-db style category-id); a request's
terminal outcome is stream 'batch-<id>/<index>' at version 1.

Ordering: every append that touches a batch first locks that batch's view row (see
projections.lock_batch), so the events of one batch are assigned positions in commit order and
a reader that follows one batch by position (replay, the SSE feed) never skips one.
"""

from __future__ import annotations

from typing import AsyncIterator, Sequence

import asyncpg

from . import events as ev
from .metrics import EVENTS_APPENDED


class StreamConflict(Exception):
    """Another writer appended to the stream first; retry on fresh state."""


def batch_stream(batch_id: str) -> str:
    return f"batch-{batch_id}"


def file_stream(file_id: str) -> str:
    return f"file-{file_id}"


INSERT_EVENTS = """
INSERT INTO events (stream, version, type, data, batch_id)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::bytea[], $5::text[])
RETURNING position
"""

OUTCOME_COLUMNS = ["stream", "version", "type", "data", "batch_id", "request_index"]
SELECT_SETTLED = "SELECT request_index FROM events WHERE batch_id = $1 AND request_index = ANY($2::int[])"

SELECT_BATCH_EVENTS = """
SELECT position, type, data, recorded_at FROM events
WHERE batch_id = $1 AND position > $2 ORDER BY position LIMIT $3
"""

SELECT_OUTCOMES_IN_RANGE = """
SELECT request_index FROM events
WHERE batch_id = $1 AND request_index >= $2 AND request_index < $3
"""


async def append(conn: asyncpg.Connection, stream: str, expected_version: int, events: Sequence[ev.Event],
                 *, batch_id: str | None = None) -> list[int]:
    """Append events at versions expected_version+1…; StreamConflict if that version is taken."""
    if not events:
        return []
    n = len(events)
    try:
        rows = await conn.fetch(
            INSERT_EVENTS, [stream] * n, list(range(expected_version + 1, expected_version + n + 1)),
            [ev.type_tag(e) for e in events], [ev.encode(e) for e in events], [batch_id] * n)
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
    settled = {r[0] for r in await conn.fetch(SELECT_SETTLED, batch_id, [o.index for o in outcomes])}
    stream = batch_stream(batch_id)
    records = []
    for o in outcomes:
        if o.index not in settled:
            settled.add(o.index)  # and the first of two outcomes for one request wins
            records.append((f"{stream}/{o.index}", 1, ev.type_tag(o), ev.encode(o), batch_id, o.index))
    if records:
        await conn.copy_records_to_table("events", records=records, columns=OUTCOME_COLUMNS)
    EVENTS_APPENDED.inc(amount=len(records))
    return {r[5] for r in records}


async def settled_indexes(conn: asyncpg.Connection, batch_id: str, start: int, end: int) -> set[int]:
    return {r[0] for r in await conn.fetch(SELECT_OUTCOMES_IN_RANGE, batch_id, start, end)}


async def batch_events_page(conn: asyncpg.Connection, batch_id: str, *, after: int, limit: int) -> list[asyncpg.Record]:
    """One page of a batch's events in log order: position, type, data, recorded_at."""
    return await conn.fetch(SELECT_BATCH_EVENTS, batch_id, after, limit)


async def read_batch_events(conn: asyncpg.Connection, batch_id: str, *, after: int = 0,
                            page: int = 500) -> AsyncIterator[asyncpg.Record]:
    """Every event of a batch in log order, fetched in pages (bounded memory)."""
    while True:
        rows = await conn.fetch(SELECT_BATCH_EVENTS, batch_id, after, page)
        for r in rows:
            yield r
        if len(rows) < page:
            return
        after = rows[-1]["position"]
