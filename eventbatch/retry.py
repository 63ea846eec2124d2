"""Retrying what failed (SPEC §12.2): a new batch, on the same endpoint and window, whose input
file holds the input lines of the requests that ended in a batch's error file, copied byte for
byte from its input file (each line as it was, `\\r` included, ended by `\\n`), in input order.

Where each request's line is comes from the batch's validation (its chunk plan: the byte range
and first index of every run of requests); the requests that failed, from the log."""

from __future__ import annotations

from bisect import bisect_left
from typing import AsyncIterator

import asyncpg
import msgspec
import structlog

from . import batch as domain, batches, blobs, events as ev, files, ids, projections, store
from .batch import BatchState
from .result_lines import EVENT_TYPE, FAILED
from .sql import Q
from .store import NotFound
from .validation import MAX_FILE_BYTES

log = structlog.get_logger("eventbatch")

_validated = msgspec.json.Decoder(ev.BatchValidated)
_VALIDATED_TAG = ev.type_tag_of(ev.BatchValidated)


class InputGone(Exception):
    """The batch's input file no longer has its bytes (deleted, or purged after it expired)."""


def request_lines(data: bytes, first_index: int) -> list[tuple[int, bytes]]:
    """The request lines of a chunk's bytes with their indexes: blank lines are not requests
    (the validator's rule, validation.iter_chunk_lines)."""
    out, index = [], first_index
    for line in data.split(b"\n"):
        if line and not line.isspace():
            out.append((index, line))
            index += 1
    return out


async def failed_lines(conn: asyncpg.Connection, state: BatchState) -> AsyncIterator[bytes]:
    """The input lines of the batch's failed requests, in input order, a chunk at a time."""
    failed: list[int] = await conn.fetchval(Q.outcome_failed_indexes, state.id, EVENT_TYPE[FAILED])
    data = await conn.fetchval(Q.batch_validated_event, store.batch_stream(state.id), _VALIDATED_TAG)
    if not failed or data is None:
        return
    for c in _validated.decode(ev.plain(data)).chunks:
        lo, hi = bisect_left(failed, c.first_index), bisect_left(failed, c.first_index + c.count)
        if lo == hi:
            continue
        raw = await blobs.read_range(conn, state.input_file_id, c.byte_start, c.byte_end)
        if len(raw) != c.byte_end - c.byte_start:
            raise InputGone(f"The input file '{state.input_file_id}' of batch '{state.id}' is no longer stored "
                            "(deleted, or expired), so its failed lines cannot be copied. Upload them again "
                            "and create a batch from that file.")
        lines = request_lines(raw, c.first_index)
        if len(lines) != c.count:
            # Damaged where it is stored (its requests failed input_unreadable): a 409 that says
            # what to do, not a 500.
            raise InputGone(f"The stored copy of the input file '{state.input_file_id}' of batch '{state.id}' is "
                            "damaged, so its failed lines cannot be copied. Upload the file again and create a "
                            "batch from it.")
        wanted = set(failed[lo:hi])
        for index, line in lines:
            if index in wanted:
                yield line + b"\n"


async def retry_batch(conn: asyncpg.Connection, *, project: str, batch_id: str,
                      window_seconds: float) -> BatchState:
    """The new batch (status validating; the caller starts its validation). Raises NotFound,
    batch.Conflict (not ended), batch.NothingToRetry, InputGone. One transaction: the new file
    and the new batch exist together or not at all."""
    async with conn.transaction():
        # The new file's row comes before the new batch's: batch_view is taken first all the same.
        await batches.lock_views_for_create(conn)
        state = await projections.get_batch(conn, batch_id, project)
        if state is None:
            raise NotFound(batch_id)
        domain.check_retry(state)   # a terminal batch never changes again: no lock needed
        fid = ids.file_id()
        writer = blobs.BlobWriter(conn, fid, max_bytes=MAX_FILE_BYTES)
        async for line in failed_lines(conn, state):
            await writer.write(line)
        size = await writer.close()
        await files.record_upload(conn, file_id=fid, project=project, filename=f"{batch_id}_retry.jsonl",
                                  purpose="batch", size=size, expires_after=None)
        new = await batches.create_batch(
            conn, project=project, input_file_id=fid, endpoint=state.endpoint,
            completion_window=state.completion_window, metadata=state.metadata,
            output_expires_after=state.output_expires_after, window_seconds=window_seconds, retry_of=batch_id)
    log.info("batch_retried", batch_id=batch_id, retry=new.id, requests=state.request_counts.failed)
    return new
