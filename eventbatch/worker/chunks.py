"""Running one held chunk: read its lines (and what its waiting requests tried before), send
each request through its provider's scheduler, and hand the recorder what came of them: outcomes,
and the chunk's lease back with its parked requests when some wait for later. A chunk whose
lines cannot be read is given back a few times, then its requests fail (a poison chunk ends).

The Worker (runner.py) claims chunks, renews and fences their leases and watches their batches;
a ChunkRunner does what happens to one chunk between its claim and its end."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Callable

import asyncpg
import msgspec
import structlog

from .. import batch as domain, events as ev, store
from . import queue
from .providers import Provider
from .recorder import HeldChunk, ParkedRequest, Recorder
from .scheduler import Parked, ProviderScheduler, RetryState

log = structlog.get_logger("eventbatch.worker")

FAILED_CHUNK_PAUSE = 1.0     # seconds a chunk whose task failed waits before it is claimed again
_attempt_list = msgspec.json.Decoder(list[ev.Attempt])


class BatchRun:
    """What a worker needs to know of a batch it runs requests for."""

    def __init__(self, state, provider: Provider | None, claimed_for: str):
        self.id = state.id
        self.project = state.project
        self.claimed_for = claimed_for   # the provider whose claim budget its chunks count against
        self.endpoint = state.endpoint
        self.input_file_id = state.input_file_id
        self.model = state.model
        self.expires_at = state.expires_at or math.inf
        self.provider = provider
        self.url = provider.url_for(state.endpoint) if provider else None
        self.active = True    # false once cancelling, expired or finished: no new request starts
        self.stopped_by: str | None = None   # 'cancelled' or 'expired' once the worker saw it

    def may_start(self) -> bool:
        return self.active and time.time() < self.expires_at

    def stop_reason(self) -> str | None:
        """'cancelled', 'expired', 'ended' or None: what the worker saw, or the worker's clock."""
        if self.stopped_by is None:
            return domain.stop_reason(domain.RUNNABLE_STATUS, self.expires_at, time.time())
        return self.stopped_by


class ChunkRunner:
    def __init__(self, pool: asyncpg.Pool, owner: str, recorder: Recorder,
                 schedulers: dict[str, ProviderScheduler], *, stopping: Callable[[], bool],
                 on_finished: Callable[[HeldChunk], None], on_given_up: Callable[[HeldChunk], None]):
        self.pool, self.owner, self.recorder, self.schedulers = pool, owner, recorder, schedulers
        self.stopping = stopping            # the worker is shutting down: start nothing new
        self.on_finished = on_finished      # nothing of the chunk was left to do
        self.on_given_up = on_given_up      # the chunk is no longer this worker's (given back or lost)
        # Chunks given back while their provider was paused: claimable again as soon as it answers.
        self.parked_while_paused: dict[str, set[tuple[str, int]]] = {name: set() for name in schedulers}

    def take_parked_while_paused(self, provider: str) -> list[tuple[str, int]]:
        keys, self.parked_while_paused[provider] = list(self.parked_while_paused[provider]), set()
        return keys

    async def run(self, chunk: HeldChunk, run: BatchRun) -> None:
        """Run the chunk's requests (its task); whatever happens, it ends in `_ended`."""
        try:
            scheduler = self.schedulers[run.provider.name] if run.provider is not None else None
            if scheduler is not None and scheduler.paused:
                # Its provider is down: give the chunk back unread until the pause may be over.
                self._park_for_pause(chunk, run, time.time() + scheduler.parked_while_paused())
                return
            async with self.pool.acquire() as conn:
                try:
                    lines = await queue.read_chunk(conn, run.input_file_id, chunk.byte_start, chunk.byte_end,
                                                   chunk.count)
                except queue.ChunkUnreadable as exc:
                    # Damaged bytes only: a database error is not the chunk's fault and spends no try.
                    await self._unreadable(conn, chunk, run, exc)
                    return
                settled = await store.settled_indexes(conn, run.id, chunk.first_index,
                                                      chunk.first_index + chunk.count)
                retries = await self._retries_of(conn, chunk)
            todo = [(chunk.first_index + i, line) for i, line in enumerate(lines)
                    if chunk.first_index + i not in settled]
            chunk.remaining = len(todo)
            if not todo:
                self.recorder.finish(chunk)
                self.on_finished(chunk)
                return
            # A task group, not gather: if one request raises, its siblings are cancelled and
            # unwound before the lease goes back, so none finishes after the release (its
            # answer dropped as lost, the request paid for twice).
            async with asyncio.TaskGroup() as requests:
                for index, line in todo:
                    requests.create_task(self._run_request(chunk, run, index, line, retries.get(index)))
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("chunk_failed", batch_id=chunk.batch_id, chunk=chunk.chunk_no)
            chunk.release_wanted = True
            chunk.due_at = time.time() + FAILED_CHUNK_PAUSE
        finally:
            self._ended(chunk, run)

    def _ended(self, chunk: HeldChunk, run: BatchRun) -> None:
        """Its task is over: every request has an outcome handed to the recorder (which marks the
        chunk done), or some wait (parked: saved, and the chunk given back until the first is
        due), or it was stopped (given back, or left to lapse when the lease was lost)."""
        if chunk.lost:
            self.on_given_up(chunk)
            return
        reason = run.stop_reason()
        if chunk.parked and reason in domain.CUT_SHORT:
            # Waiting when its batch was cancelled or expired: cut short, its attempts kept.
            for p in chunk.parked:
                self.recorder.add(chunk, domain.unfinished_outcome(reason, p.index, p.custom_id, p.attempts))
            chunk.parked = []
        if chunk.parked:
            first_due = min(p.due_at for p in chunk.parked)
            chunk.due_at = first_due if chunk.due_at is None else min(chunk.due_at, first_due)
            chunk.release_wanted = True
        if chunk.release_wanted:
            self.on_given_up(chunk)
            self.recorder.release(chunk)

    def _park_for_pause(self, chunk: HeldChunk, run: BatchRun, until: float) -> None:
        chunk.due_at = until
        chunk.release_wanted = True
        self.parked_while_paused[run.provider.name].add((chunk.batch_id, chunk.chunk_no))

    async def _retries_of(self, conn, chunk: HeldChunk) -> dict[int, RetryState]:
        """What the chunk's waiting requests tried so far, saved when it was last given back."""
        now = time.time()
        return {r["request_index"]: RetryState(_attempt_list.decode(r["attempts"]), r["counted"], now + r["due_in"])
                for r in await queue.retries_in(conn, chunk.batch_id, chunk.first_index,
                                                chunk.first_index + chunk.count)}

    async def _unreadable(self, conn, chunk: HeldChunk, run: BatchRun, exc: Exception) -> None:
        """The chunk's lines cannot be read back from storage (damaged or missing bytes). Give it
        back for a while, a few times; then its requests fail with a clear error, so the chunk
        neither loops forever nor holds its batch open (a poison chunk)."""
        tries = await queue.read_failures(conn, chunk.batch_id, chunk.chunk_no) + 1
        log.error("chunk_unreadable", batch_id=chunk.batch_id, chunk=chunk.chunk_no, tries=tries,
                  error=type(exc).__name__, detail=str(exc)[:300])
        if tries < domain.POISON_AFTER:
            await queue.read_failed(conn, chunk.batch_id, chunk.chunk_no, self.owner, chunk.epoch,
                                    delay=FAILED_CHUNK_PAUSE * 4 ** (tries - 1))
            chunk.lost = True     # given back by that statement: nothing more to do with it
            return
        settled = await store.settled_indexes(conn, run.id, chunk.first_index, chunk.first_index + chunk.count)
        custom_ids = await queue.custom_ids(conn, run.input_file_id, chunk.byte_start, chunk.byte_end, chunk.count)
        failed = [domain.unreadable_outcome(chunk.first_index + i, cid)
                  for i, cid in enumerate(custom_ids) if chunk.first_index + i not in settled]
        chunk.remaining = len(failed)
        for outcome in failed:
            self.recorder.add(chunk, outcome)
        if not failed:
            self.recorder.finish(chunk)

    async def _run_request(self, chunk: HeldChunk, run: BatchRun, index: int, line,
                           retry: RetryState | None) -> None:
        if run.provider is None:
            self.recorder.add(chunk, ev.RequestFailed(
                index=index, custom_id=line.custom_id, error_code="upstream_unreachable",
                error_message=f"No upstream provider is configured for model '{run.model}'. "
                              "Add it to a provider's models in EVENTBATCH_CONFIG."))
            return
        state = retry or RetryState()
        scheduler = self.schedulers[run.provider.name]
        try:
            result = await scheduler.run(
                (run.id, index), run.project, run.expires_at, run.url, bytes(line.body), state,
                may_start=lambda: run.may_start() and not chunk.aborted and not self.stopping())
        except asyncio.CancelledError:
            self._stopped(chunk, run, index, line.custom_id, state)
            raise
        if result is None or chunk.aborted:
            self._stopped(chunk, run, index, line.custom_id, state)
            return
        if isinstance(result, Parked):
            chunk.parked.append(ParkedRequest(index, line.custom_id, state.attempts, state.counted, result.due_at))
            if scheduler.paused:
                self.parked_while_paused[run.provider.name].add((chunk.batch_id, chunk.chunk_no))
            return
        if result.succeeded:
            event = ev.RequestSucceeded(index=index, custom_id=line.custom_id, status_code=result.status_code,
                                        body=msgspec.Raw(result.body), attempts=result.attempts,
                                        request_id=result.request_id, usage=result.usage or ev.Usage())
        else:
            event = ev.RequestFailed(
                index=index, custom_id=line.custom_id, attempts=result.attempts, status_code=result.status_code,
                body=msgspec.Raw(result.body) if result.body is not None else ev.NULL,
                request_id=result.request_id, error_code=result.error_code, error_message=result.error_message)
        self.recorder.add(chunk, event)

    def _stopped(self, chunk: HeldChunk, run: BatchRun, index: int, custom_id: str, state: RetryState) -> None:
        """A request stopped before its outcome. By the batch's cancel or expiry after it was
        tried: its attempts go into the log with its batch_cancelled / batch_expired outcome.
        For another reason (shutdown, a sibling's failure) after it was tried: its attempts are
        saved with the chunk, for the next lease holder to carry on from. Lease lost: nothing."""
        if not state.attempts or chunk.lost:
            return
        reason = run.stop_reason()
        if reason in domain.CUT_SHORT:
            self.recorder.add(chunk, domain.unfinished_outcome(reason, index, custom_id, state.attempts))
        else:
            chunk.parked.append(ParkedRequest(index, custom_id, state.attempts, state.counted, state.next_at))
