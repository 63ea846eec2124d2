"""Settling a batch: finalizing, completion, expiry, cancellation, and its output files.

Anyone may call settle_batch at any time (the sweeper, a worker whose chunks finished, the API
after a cancel); it locks the batch, gathers the facts, asks the domain (batch.settle) what is
due, and appends exactly what the domain returns. It decides nothing itself."""

from __future__ import annotations

import time

import asyncpg
import msgspec
import structlog

from .. import batch as domain, batches, blobs, events as ev, files, ids, projections, store
from ..batch import BatchState
from . import queue
from .validating import validate_batch

log = structlog.get_logger("eventbatch")


class _OutResponse(msgspec.Struct):
    status_code: int
    request_id: str | None
    body: msgspec.Raw


class _OutError(msgspec.Struct):
    code: str
    message: str


class OutputLine(msgspec.Struct):
    id: str
    custom_id: str
    response: _OutResponse | None
    error: _OutError | None


_outcome_decoder = msgspec.json.Decoder(ev.RequestSucceeded | ev.RequestFailed)
_line_encoder = msgspec.json.Encoder()


def output_line(batch_id: str, o: ev.RequestSucceeded | ev.RequestFailed) -> bytes:
    """One line of the output or error file (SPEC §3), derived from a request's terminal event."""
    if isinstance(o, ev.RequestFailed) and o.status_code is None:
        line = OutputLine(ids.request_line_id(batch_id, o.index), o.custom_id, None,
                          _OutError(o.error_code or "upstream_unreachable", o.error_message or ""))
    else:
        line = OutputLine(ids.request_line_id(batch_id, o.index), o.custom_id,
                          _OutResponse(o.status_code, o.request_id, o.body), None)
    return _line_encoder.encode(line) + b"\n"


async def _decide(conn, state: BatchState, validation_checked: bool = False) -> domain.Due:
    now = time.time()
    return domain.settle(state, now=now, open_requests=await queue.any_open(conn, state.id),
                         live_leases=await queue.live_leases(conn, state.id), validation_checked=validation_checked)


async def settle_batch(pool: asyncpg.Pool, batch_id: str, chunk_size: int = 256) -> BatchState | None:
    """Move a batch towards its end if it is due: expiry, cancellation, completion. It does
    nothing when nothing is due."""
    async with pool.acquire() as conn:
        # A cheap look without a lock first: most calls find nothing due.
        state = await projections.get_batch(conn, batch_id)
        if state is None or state.terminal:
            return state
        due = await _decide(conn, state)
        checked = False
        if due.validate_first:
            # None: a validation is running now, and it settles the batch when it is done.
            if await validate_batch(pool, batch_id, chunk_size) is None:
                return state
            checked = True
        elif due.nothing:
            return state
        # Each step is a transaction of its own: finalizing_at is visible while outputs are written.
        for _ in range(3):
            async with conn.transaction():
                state = await projections.lock_batch(conn, batch_id)
                if state is None or state.terminal:
                    return state
                due = await _decide(conn, state, validation_checked=checked)
                if due.events:
                    state = await batches.append(conn, state, list(due.events))
                    log.info("batch_" + state.status, batch_id=batch_id)
                    continue
                if due.closing is None:
                    return state
                state = await _close(conn, state, due.closing)
            log.info("batch_" + state.status, batch_id=batch_id, completed=state.request_counts.completed,
                     failed=state.request_counts.failed)
            return state
        return state


async def _close(conn: asyncpg.Connection, state: BatchState, kind: str) -> BatchState:
    """In the caller's transaction, with the batch locked: outcomes for every unfinished request,
    the output files, the closing events; the work queue closed; freed input bytes."""
    if kind in domain.CUT_SHORT:
        state = await _settle_unfinished(conn, state, kind)
    output_file_id, error_file_id = await _write_outputs(conn, state)
    state = await batches.append(conn, state, domain.closing_events(
        state, kind, output_file_id=output_file_id, error_file_id=error_file_id, now=time.time()))
    await queue.close_all(conn, state.id)
    await files.free_input_if_unused(conn, state)
    return state


async def _settle_unfinished(conn: asyncpg.Connection, state: BatchState, kind: str) -> BatchState:
    """Every request without an outcome gets one: batch_cancelled or batch_expired."""
    for c in await queue.open_chunks(conn, state.id):
        first = c["first_index"]
        settled = await store.settled_indexes(conn, state.id, first, first + c["count"])
        lines = await queue.read_chunk(conn, state.input_file_id, c["byte_start"], c["byte_end"], c["count"])
        missing = [domain.unfinished_outcome(kind, first + i, line.custom_id)
                   for i, line in enumerate(lines) if first + i not in settled]
        recorded = await store.append_outcomes(conn, state.id, missing)
        state = domain.fold(state, [o for o in missing if o.index in recorded])
    return state   # the view is saved with the closing events


async def _write_outputs(conn: asyncpg.Connection, state: BatchState) -> tuple[str | None, str | None]:
    """Materialise the output and error files from the request events, in input order."""
    out_id, err_id = ids.file_id(), ids.file_id()
    out = blobs.BlobWriter(conn, out_id)
    err = blobs.BlobWriter(conn, err_id)
    async for (data,) in store.iter_outcomes_in_input_order(conn, state.id):
        o = _outcome_decoder.decode(data)
        await (out if isinstance(o, ev.RequestSucceeded) else err).write(output_line(state.id, o))
    now = time.time()
    expires = int(now) + state.output_expires_after if state.output_expires_after else None
    made: list[str | None] = []
    for name, writer, fid in (("output", out, out_id), ("error", err, err_id)):
        if await writer.close() == 0:
            made.append(None)
            continue
        await files.create_file(conn, ev.FileCreated(
            file_id=fid, project=state.project, filename=f"{state.id}_{name}.jsonl", purpose="batch_output",
            bytes=writer.size, at=now, expires_at=expires, batch_id=state.id))
        made.append(fid)
    return made[0], made[1]
