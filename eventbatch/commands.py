"""The application's commands: each loads state, asks the pure domain (batch.py) what happens,
and appends the events together with their views in one transaction."""

from __future__ import annotations

import time
from typing import AsyncIterator, Callable

import asyncpg
import msgspec
import structlog

from . import batch as domain
from . import events as ev
from . import files, ids, projections, store
from .batch import BatchState
from .projections import FileView
from .validation import MAX_FILE_BYTES, Validator, iter_chunk_lines

log = structlog.get_logger("eventbatch")


class NotFound(Exception):
    pass


class BadInputFile(Exception):
    """The input file named by a create is unknown to the project, deleted, or not a batch file."""


# --- keys ---------------------------------------------------------------------------------

async def create_key(conn: asyncpg.Connection, project: str) -> str:
    key = ids.api_key()
    await conn.execute("INSERT INTO api_keys (key_hash, project) VALUES ($1, $2)", ids.key_hash(key), project)
    return key


async def project_for_key(conn, key: str) -> str | None:
    return await conn.fetchval("SELECT project FROM api_keys WHERE key_hash = $1", ids.key_hash(key))


# --- files --------------------------------------------------------------------------------

async def _create_file(conn: asyncpg.Connection, event: ev.FileCreated) -> FileView:
    [seq] = await store.append(conn, store.file_stream(event.file_id), 0, [event])
    view = projections.evolve_file(None, event)
    await projections.save_file(conn, view, seq)
    return view


async def store_upload(conn: asyncpg.Connection, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
    """Stream uploaded bytes into storage under a new file id; raises files.TooLarge past the
    limit. The caller runs it in the transaction that records the file, so a failed or
    oversized upload leaves nothing behind."""
    fid = ids.file_id()
    writer = files.BlobWriter(conn, fid, max_bytes=MAX_FILE_BYTES)
    async for chunk in chunks:
        await writer.write(chunk)
    return fid, await writer.close()


async def record_upload(conn: asyncpg.Connection, *, file_id: str, project: str, filename: str, purpose: str,
                        size: int, expires_after: int | None) -> FileView:
    now = time.time()
    return await _create_file(conn, ev.FileCreated(
        file_id=file_id, project=project, filename=filename, purpose=purpose, bytes=size, at=now,
        expires_at=int(now) + expires_after if expires_after else None))


async def delete_file(conn: asyncpg.Connection, project: str, file_id: str) -> None:
    async with conn.transaction():
        doc = await conn.fetchval(
            "SELECT doc FROM file_view WHERE id = $1 AND project = $2 AND NOT deleted FOR UPDATE", file_id, project)
        if doc is None:
            raise NotFound(file_id)
        view = projections.decode_file(doc)
        event = ev.FileDeleted(file_id=file_id, at=time.time())
        await store.append(conn, store.file_stream(file_id), view.version, [event])
        await projections.save_file(conn, projections.evolve_file(view, event))
        # The bytes go unless a batch that has not finished still reads them (the last such
        # batch drops them when it ends).
        if view.purpose != "batch" or not await _input_in_use(conn, project, file_id):
            await files.delete_blob(conn, file_id)


async def _input_in_use(conn: asyncpg.Connection, project: str, file_id: str, but: str | None = None) -> bool:
    for (doc,) in await conn.fetch(
            "SELECT doc FROM batch_view WHERE project = $1 AND status NOT IN "
            "('failed', 'completed', 'expired', 'cancelled') AND id IS DISTINCT FROM $2", project, but):
        if projections.decode_batch(doc).input_file_id == file_id:
            return True
    return False


# --- batches ------------------------------------------------------------------------------

async def batch_command(conn: asyncpg.Connection, batch_id: str,
                        decide: Callable[[BatchState], list[ev.Event]]) -> tuple[BatchState, list[ev.Event]]:
    """Lock the batch, decide, append, update the view: one transaction."""
    async with conn.transaction():
        state = await projections.lock_batch(conn, batch_id)
        if state is None:
            raise NotFound(batch_id)
        new = decide(state)
        if new:
            await store.append(conn, store.batch_stream(batch_id), state.version, new, batch_id=batch_id)
            state = domain.fold(state, new)
            await projections.save_batch(conn, state)
            for e in new:
                if isinstance(e, ev.BatchValidated):
                    await _enqueue_chunks(conn, batch_id, e.chunks)
            if any(isinstance(e, (ev.BatchStarted, ev.BatchCancelling)) for e in new):
                # Wakes the workers at commit (work to claim, requests to stop); polling covers a lost one.
                await conn.execute("SELECT pg_notify('eventbatch', $1)", batch_id)
        return state, new


async def _enqueue_chunks(conn: asyncpg.Connection, batch_id: str, chunks: list[ev.ChunkPlan]) -> None:
    # Enqueued in the transaction that records the validation: the work exists iff it commits.
    await conn.copy_records_to_table(
        "work_chunks", records=[(batch_id, n, c.first_index, c.count, c.byte_start, c.byte_end)
                                for n, c in enumerate(chunks)],
        columns=["batch_id", "chunk_no", "first_index", "count", "byte_start", "byte_end"])


async def create_batch(conn: asyncpg.Connection, *, project: str, input_file_id: str, endpoint: str,
                       completion_window: str, metadata: dict[str, str] | None,
                       output_expires_after: int | None, window_seconds: float) -> BatchState:
    now = time.time()
    bid = ids.batch_id()
    event = ev.BatchCreated(batch_id=bid, project=project, input_file_id=input_file_id, endpoint=endpoint,
                            completion_window=completion_window, at=now,
                            expires_at=int(now + window_seconds), metadata=metadata,
                            output_expires_after=output_expires_after)
    async with conn.transaction():
        # FOR SHARE: a concurrent delete of the file waits for this batch to exist (and then
        # keeps the bytes the batch reads), instead of removing them under it.
        doc = await conn.fetchval("SELECT doc FROM file_view WHERE id = $1 AND project = $2 AND NOT deleted "
                                  "FOR SHARE", input_file_id, project)
        f = projections.decode_file(doc) if doc is not None else None
        if f is None or f.expired(now):
            raise BadInputFile(f"No file with id '{input_file_id}' found. Upload it with purpose 'batch' first.")
        if f.purpose != "batch":
            raise BadInputFile(f"File '{f.id}' has purpose '{f.purpose}'; a batch needs a file uploaded with "
                               "purpose 'batch'.")
        [seq] = await store.append(conn, store.batch_stream(bid), 0, [event], batch_id=bid)
        state = domain.evolve(None, event)
        await projections.save_batch(conn, state, seq)
    log.info("batch_created", batch_id=bid, project=project)
    return state


async def cancel_batch(conn: asyncpg.Connection, batch_id: str) -> BatchState:
    state, new = await batch_command(conn, batch_id, lambda s: domain.cancel(s, time.time()))
    if new:
        log.info("batch_cancelling", batch_id=batch_id)
    return state


VALIDATION_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('validate/' || $1))"


async def validate_batch(pool: asyncpg.Pool, batch_id: str, chunk_size: int, *,
                         settle: bool = True) -> BatchState | None:
    """Validate the input file of a `validating` batch and record the outcome. Safe to call
    from several processes: an advisory lock lets one of them work, the others get None."""
    state = await _validate(pool, batch_id, chunk_size)
    if settle and state is not None and state.status == "cancelling":
        state = await settle_batch(pool, batch_id, chunk_size)
    return state


async def _validate(pool: asyncpg.Pool, batch_id: str, chunk_size: int) -> BatchState | None:
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(VALIDATION_LOCK, batch_id):
            return None
        state = await projections.get_batch(conn, batch_id)
        if state is None or state.status not in ("validating", "cancelling") or state.request_counts.total:
            return state
        t0 = time.perf_counter()
        validator = Validator(state.endpoint, chunk_size=chunk_size)
        async for piece in files.iter_pieces(conn, state.input_file_id):
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
        state, _ = await batch_command(conn, batch_id, lambda s: domain.record_validation(s, [outcome], now))
        log.info("batch_validated", batch_id=batch_id, status=state.status, requests=result.total,
                 errors=result.error_count, seconds=round(time.perf_counter() - t0, 3))
        return state


# --- settling: expiry, cancellation, completion, output files ------------------------------

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
    """One line of the output or error file, derived from a request's terminal event."""
    if isinstance(o, ev.RequestFailed) and o.status_code is None:
        line = OutputLine(ids.request_line_id(batch_id, o.index), o.custom_id, None,
                          _OutError(o.error_code or "upstream_unreachable", o.error_message or ""))
    else:
        line = OutputLine(ids.request_line_id(batch_id, o.index), o.custom_id,
                          _OutResponse(o.status_code, o.request_id, o.body), None)
    return _line_encoder.encode(line) + b"\n"


# Done, and a new epoch that fences off any worker still holding one; rows locked in chunk order,
# the order every other lease writer uses.
CLOSE_CHUNKS = """
WITH c AS (SELECT batch_id, chunk_no FROM work_chunks WHERE batch_id = $1 AND NOT done ORDER BY chunk_no FOR UPDATE)
UPDATE work_chunks w SET done = true, lease_epoch = w.lease_epoch + 1
FROM c WHERE w.batch_id = c.batch_id AND w.chunk_no = c.chunk_no
"""


async def live_leases(conn, batch_id: str) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM work_chunks WHERE batch_id = $1 AND NOT done AND lease_expires_at > now()", batch_id)


async def settle_batch(pool: asyncpg.Pool, batch_id: str, chunk_size: int = 256) -> BatchState | None:
    """Move a batch towards its end if it is due: expiry, cancellation, completion. Anyone may
    call it at any time; it does nothing when nothing is due."""
    async with pool.acquire() as conn:
        # A cheap look without a lock first: most calls find nothing due.
        state = await projections.get_batch(conn, batch_id)
        if state is not None and state.status == "cancelling" and not state.chunk_count \
                and not state.request_counts.total:
            # Cancelled before validation recorded its requests: validate first, so every request
            # of a valid file gets its batch_cancelled line. None: a validation is running now,
            # and it settles the batch when it is done.
            if await validate_batch(pool, batch_id, chunk_size, settle=False) is None:
                return state
        if state is None or state.terminal or (
                state.status == "in_progress" and time.time() < (state.expires_at or 0) and await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM work_chunks WHERE batch_id = $1 AND NOT done)", batch_id)):
            return state
        async with conn.transaction():
            state = await projections.lock_batch(conn, batch_id)
            if state is None or state.terminal:
                return state
            now = time.time()
            all_done = not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM work_chunks WHERE batch_id = $1 AND NOT done)", batch_id)
            kind = domain.settlement(state, now, all_done)
            if kind is None:
                return state
            if kind == "cancelled" and await live_leases(conn, batch_id):
                return state  # workers are letting go of their requests; the next sweep settles it
            if kind == "finalizing":
                new = [ev.BatchFinalizing(at=now)]
                await store.append(conn, store.batch_stream(batch_id), state.version, new, batch_id=batch_id)
                state = domain.fold(state, new)
                await projections.save_batch(conn, state)
                log.info("batch_finalizing", batch_id=batch_id)
        async with conn.transaction():
            state = await projections.lock_batch(conn, batch_id)
            all_done = not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM work_chunks WHERE batch_id = $1 AND NOT done)", batch_id)
            kind = domain.settlement(state, time.time(), all_done)
            if kind not in ("cancelled", "expired", "completed"):
                return state
            if kind != "completed":
                state = await _settle_unfinished(conn, state, kind)
            state = await _write_outputs(conn, state)
            closing = [domain.closing_event(kind, time.time())]
            await store.append(conn, store.batch_stream(batch_id), state.version, closing, batch_id=batch_id)
            state = domain.fold(state, closing)
            await projections.save_batch(conn, state)
            await conn.execute(CLOSE_CHUNKS, batch_id)
            # An input file deleted while this batch ran kept its bytes for it; they go now.
            if await conn.fetchval("SELECT deleted FROM file_view WHERE id = $1", state.input_file_id) \
                    and not await _input_in_use(conn, state.project, state.input_file_id, but=batch_id):
                await files.delete_blob(conn, state.input_file_id)
        log.info("batch_" + kind, batch_id=batch_id, completed=state.request_counts.completed,
                 failed=state.request_counts.failed)
        return state


async def read_chunk(conn, file_id: str, start: int, end: int, count: int) -> list:
    """The request lines of a chunk; an error, never an empty list, when the bytes are missing."""
    lines = list(iter_chunk_lines(await files.read_range(conn, file_id, start, end)))
    if len(lines) != count:
        raise RuntimeError(f"input file {file_id}: bytes {start}-{end} hold {len(lines)} requests, "
                           f"expected {count}; the stored file is damaged")
    return lines


async def _settle_unfinished(conn: asyncpg.Connection, state: BatchState, kind: str) -> BatchState:
    """Every request without an outcome gets one: batch_cancelled or batch_expired."""
    code, message = domain.unfinished_error(kind)
    chunks = await conn.fetch("SELECT first_index, count, byte_start, byte_end FROM work_chunks "
                              "WHERE batch_id = $1 AND NOT done ORDER BY chunk_no", state.id)
    for c in chunks:
        settled = await store.settled_indexes(conn, state.id, c["first_index"], c["first_index"] + c["count"])
        lines = await read_chunk(conn, state.input_file_id, c["byte_start"], c["byte_end"], c["count"])
        missing = [ev.RequestFailed(index=c["first_index"] + i, custom_id=line.custom_id,
                                    error_code=code, error_message=message)
                   for i, line in enumerate(lines) if c["first_index"] + i not in settled]
        recorded = await store.append_outcomes(conn, state.id, missing)
        state = domain.fold(state, [o for o in missing if o.index in recorded])
    return state


async def _write_outputs(conn: asyncpg.Connection, state: BatchState) -> BatchState:
    """Materialise the output and error files from the request events, in input order."""
    out_id, err_id = ids.file_id(), ids.file_id()
    out = files.BlobWriter(conn, out_id)
    err = files.BlobWriter(conn, err_id)
    async for (data,) in conn.cursor(
            "SELECT data FROM events WHERE batch_id = $1 AND request_index IS NOT NULL ORDER BY request_index",
            state.id, prefetch=100):
        o = _outcome_decoder.decode(data)
        await (out if isinstance(o, ev.RequestSucceeded) else err).write(output_line(state.id, o))
    now = time.time()
    expires = int(now) + state.output_expires_after if state.output_expires_after else None
    made: dict[str, str | None] = {}
    for name, writer, fid in (("output", out, out_id), ("error", err, err_id)):
        size = await writer.close()
        if size == 0:
            made[name] = None
            continue
        await _create_file(conn, ev.FileCreated(
            file_id=fid, project=state.project, filename=f"{state.id}_{name}.jsonl", purpose="batch_output",
            bytes=size, at=now, expires_at=expires, batch_id=state.id))
        made[name] = fid
    new = [ev.BatchOutputWritten(output_file_id=made["output"], error_file_id=made["error"], at=now)]
    await store.append(conn, store.batch_stream(state.id), state.version, new, batch_id=state.id)
    return domain.fold(state, new)
