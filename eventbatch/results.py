"""A batch's results read from the log: the output and error files in input order (SPEC §12.5)
and the lines recorded so far in record order (SPEC §12.1), both as pages of ready lines.

Nothing here is stored: a line is result_lines.output_line of a request's outcome event, so
every download, and every /results answer, is the same bytes whatever was rebuilt meanwhile.
Each page is one query through the pool: a slow reader holds no connection between pages, and
memory stays at one page (PAGE_BYTES, or one outcome when a single body is larger)."""

from __future__ import annotations

from typing import AsyncIterator

import asyncpg

from . import store
from .result_lines import EVENT_TYPE, FAILED, SUCCEEDED, kind_of, line_of_event, outcome_of, output_line
from .sql import Q

PAGE_BYTES = 4 << 20     # of event JSON per page (decompressed: results.sql)
PAGE_ROWS = 1000


async def file_pages(db: asyncpg.Pool | asyncpg.Connection, batch_id: str, kind: str,
                     *, page_bytes: int = PAGE_BYTES) -> AsyncIterator[bytes]:
    """The output ('succeeded') or error ('failed') file of a batch, in input order, a page of
    lines at a time: windows of PAGE_ROWS request indexes, each cut into pages by bytes."""
    etype = EVENT_TYPE[kind]
    last = await db.fetchval(Q.result_last_index, batch_id)
    after = -1
    while last is not None and after < last:
        rows = await db.fetch(Q.result_page_in_input_order, batch_id, after, etype, PAGE_ROWS, page_bytes)
        if rows:
            yield b"".join([line_of_event(batch_id, r[1]) for r in rows])
        # The whole window came back: the next one. Cut short by bytes: on from its last line.
        after = after + PAGE_ROWS if not rows or len(rows) == rows[0][2] else rows[-1][0]


async def last_position(db: asyncpg.Pool | asyncpg.Connection, batch_id: str) -> int:
    """The position of the batch's newest event (0 if none)."""
    return await db.fetchval(Q.result_last_position, batch_id) or 0


async def recorded_pages(db: asyncpg.Pool | asyncpg.Connection, batch_id: str, *, after: int, upto: int,
                         kind: str | None, page_bytes: int = PAGE_BYTES) -> AsyncIterator[bytes]:
    """The lines of outcomes recorded at positions (after, upto], in record order, both kinds or
    one ('succeeded', 'failed'), a page at a time."""
    etype = None if kind is None else EVENT_TYPE[kind]
    while after < upto:
        rows = await db.fetch(Q.result_page_in_record_order, batch_id, after, upto, etype, PAGE_ROWS, page_bytes)
        if not rows:
            return
        yield b"".join([line_of_event(batch_id, r[1]) for r in rows])
        after = rows[-1][0]


async def measure(conn: asyncpg.Connection, batch_id: str) -> tuple[int, int]:
    """The sizes of the output and error files, line by line from the log: only for a view folded
    before the fold kept them (batch.BatchState.output_bytes None). Inside a transaction."""
    sizes = {SUCCEEDED: 0, FAILED: 0}
    async for (data,) in store.iter_outcomes_in_input_order(conn, batch_id):
        o = outcome_of(data)
        sizes[kind_of(o)] += len(output_line(batch_id, o))
    return sizes[SUCCEEDED], sizes[FAILED]
