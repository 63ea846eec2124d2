"""Validating a batch's input file: read it, run the streaming validator, record the outcome.

Due work of any process (the sweeper finds it; the API starts it right after a create)."""

from __future__ import annotations

import time
from typing import Callable

import asyncpg
import structlog

from .. import batch as domain, batches, blobs, events as ev, files, projections
from ..batch import BatchState
from ..sql import Q
from ..validation import Validator

log = structlog.get_logger("eventbatch")


async def validate_batch(pool: asyncpg.Pool, batch_id: str, chunk_size: int, *,
                         serves_model: Callable[[str], bool] | None = None) -> BatchState | None:
    """Validate the input file of a `validating` batch and record the outcome. Safe to call
    from several processes: an advisory lock lets one of them work, the others get None.
    `serves_model` (providers.model_check) says whether a configured provider serves the file's
    model (None: every model is served). A batch cancelled meanwhile is settled by the caller
    (settle_batch after it), not here."""
    return await _validate(pool, batch_id, chunk_size, serves_model)


async def _validate(pool: asyncpg.Pool, batch_id: str, chunk_size: int,
                    serves_model: Callable[[str], bool] | None) -> BatchState | None:
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(Q.batch_validation_try_lock, batch_id):
            return None
        state = await projections.get_batch(conn, batch_id)
        if state is None or not domain.may_validate(state):
            return state
        t0 = time.perf_counter()
        validator = Validator(state.endpoint, chunk_size=chunk_size, serves_model=serves_model)
        async for piece in blobs.iter_pieces(conn, state.input_file_id):
            validator.feed(piece)
        result = validator.finish()
        now = time.time()
        if result.errors:
            errors = [ev.LineError(code=e.code, message=e.message, param=e.param, line=e.line) for e in result.errors]
            if result.error_count > len(errors):
                errors.append(ev.LineError(
                    code="too_many_errors", param=None, line=None,
                    message=f"{result.error_count} lines have errors; only the first {len(result.errors)} are listed. "
                            "Fix them and upload the file again."))
            outcome: ev.Event = ev.BatchValidationFailed(errors=errors, error_count=result.error_count, at=now)
        else:
            outcome = ev.BatchValidated(
                total=result.total, model=result.model, at=now,
                chunks=[ev.ChunkPlan(c.first_index, c.count, c.byte_start, c.byte_end) for c in result.chunks])
        state, _ = await batches.transition(conn, batch_id, lambda s: domain.record_validation(s, [outcome], now))
        if state.terminal:
            # Failed validation ends the batch: an input deleted meanwhile loses its bytes now
            # if no other batch reads it (the batch's row stays locked until this commits).
            await files.free_input_if_unused(conn, state)
        log.info("batch_validated", batch_id=batch_id, status=state.status, requests=result.total,
                 errors=result.error_count, seconds=round(time.perf_counter() - t0, 3))
        return state
