"""Settling a batch: finalizing, completion, expiry, cancellation, and its output files (their
events: the lines themselves are derived from the log, see results.py).

Anyone may call settle_batch at any time (the sweeper, a worker whose chunks finished, the API
after a cancel); it locks the batch, gathers the facts, asks the domain (batch.settle) what is
due, and appends exactly what the domain returns. It decides nothing itself."""

from __future__ import annotations

import time

import asyncpg
import msgspec
import structlog

from .. import batch as domain, batches, events as ev, files, ids, projections, results, store
from ..batch import BatchState
from ..result_lines import FAILED, SUCCEEDED
from . import queue
from .validating import validate_batch

log = structlog.get_logger("eventbatch")

_attempt_list = msgspec.json.Decoder(list[ev.Attempt])


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
    if state.output_bytes is None or state.error_bytes is None:
        # A view folded before the fold kept sizes (see BatchState): measured once, from the log.
        out_bytes, err_bytes = await results.measure(conn, state.id)
        state = msgspec.structs.replace(state, output_bytes=out_bytes, error_bytes=err_bytes)
    output_file_id, error_file_id = await _output_files(conn, state)
    state = await batches.append(conn, state, domain.closing_events(
        state, kind, output_file_id=output_file_id, error_file_id=error_file_id, now=time.time()))
    await queue.close_all(conn, state.id)
    await files.free_input_if_unused(conn, state)
    return state


async def _settle_unfinished(conn: asyncpg.Connection, state: BatchState, kind: str) -> BatchState:
    """Every request without an outcome gets one: batch_cancelled or batch_expired, with the
    attempts of those that were waiting for a retry (SPEC §7). Custom ids are read leniently, so
    a chunk whose bytes are damaged cannot hold its batch open."""
    for c in await queue.open_chunks(conn, state.id):
        first = c["first_index"]
        settled = await store.settled_indexes(conn, state.id, first, first + c["count"])
        custom_ids = await queue.custom_ids(conn, state.input_file_id, c["byte_start"], c["byte_end"], c["count"])
        tried = {r["request_index"]: _attempt_list.decode(r["attempts"])
                 for r in await queue.retries_in(conn, state.id, first, first + c["count"])}
        missing = [domain.unfinished_outcome(kind, first + i, custom_id, tried.get(first + i, ()))
                   for i, custom_id in enumerate(custom_ids) if first + i not in settled]
        recorded = await store.append_outcomes(conn, state.id, missing)
        state = domain.fold(state, [o for o in missing if o.index in recorded])
    return state   # the view is saved with the closing events


async def _output_files(conn: asyncpg.Connection, state: BatchState) -> tuple[str | None, str | None]:
    """The output and error files: their events only. Their lines are served from the request
    events (results.file_pages) and their sizes were summed by the fold as outcomes came in, so
    this costs the same for 100 requests as for 50,000 (SPEC §12.5)."""
    now = time.time()
    expires = int(now) + state.output_expires_after if state.output_expires_after else None
    made: list[str | None] = []
    for name, kind, count, size in (("output", SUCCEEDED, state.request_counts.completed, state.output_bytes),
                                    ("error", FAILED, state.request_counts.failed, state.error_bytes)):
        if count == 0:
            made.append(None)
            continue
        fid = ids.file_id()
        await files.create_file(conn, ev.FileCreated(
            file_id=fid, project=state.project, filename=f"{state.id}_{name}.jsonl", purpose="batch_output",
            bytes=size, at=now, expires_at=expires, batch_id=state.id, results=kind))
        made.append(fid)
    return made[0], made[1]
