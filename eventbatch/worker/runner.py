"""The worker: claims chunks of running batches with leases, runs their requests upstream,
records outcomes in group commits, and settles the batches whose chunks it finished (the rest
of due work is the sweeper's, which every process runs: server.py).

Wake-ups come from LISTEN/NOTIFY (channel 'eventbatch'); polling guarantees progress when a
notification is lost."""

from __future__ import annotations

import asyncio
import functools
import math
import os
import socket
import time
import uuid

import aiohttp
import asyncpg
import structlog

from .. import idempotency
from .. import batch as domain, projections
from ..config import Settings
from . import queue
from .budget import MinuteBudget
from .chunks import BatchRun, ChunkRunner
from .finalizer import settle_batch
from .providers import Provider, load_providers, provider_for, route_of
from .recorder import HeldChunk, Recorder
from .scheduler import Backoff, ProviderScheduler
from .webhooks import Deliveries

log = structlog.get_logger("eventbatch.worker")

CHANNEL = "eventbatch"
POLL_INTERVAL = 0.5


class Worker:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, *, providers: list[Provider] | None = None):
        self.settings, self.pool = settings, pool
        self.providers = providers if providers is not None else load_providers(settings)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        backoff = Backoff.for_window(settings)
        # Each provider's scheduler: its slots (shared fairly between the projects and batches
        # held, fairshare.py), adapted to its 429s, and its pause.
        self.schedulers = {p.name: ProviderScheduler(p, lambda: self._session, max_attempts=settings.max_attempts,
                                                     backoff=backoff, timeout=settings.upstream_timeout_seconds,
                                                     on_resumed=functools.partial(self._wake_parked, p.name),
                                                     budget=MinuteBudget(pool, p.name, p.rpm, p.tpm)
                                                     if p.rpm or p.tpm else None)
                           for p in self.providers}
        # Claim per provider, by requests, not chunks: enough open requests to keep its slots busy
        # (four times its concurrency), however small the chunks (a batch of 5 requests is one
        # chunk); a backlog for one provider does not hold back batches bound for another.
        self.want = {p.name: 4 * p.concurrency for p in self.providers}
        self.routes = {p.name: route_of(self.providers, p) for p in self.providers}
        self.want_requests = sum(self.want.values())
        self.max_chunks = 256
        self.held: dict[tuple[str, int], HeldChunk] = {}
        # Chunks stopped (cancel, expiry, shutdown) whose leases are still ours until the recorder
        # has flushed what they finished and released them: heartbeated like held ones, so a
        # batch's settling waits for those results instead of dropping them (SPEC §11).
        self.letting_go: dict[tuple[str, int], HeldChunk] = {}
        self.runs: dict[str, BatchRun] = {}
        self._stop = asyncio.Event()
        self.recorder = Recorder(pool, self.owner, on_batch_done=self._batch_done,
                                 on_chunk_finished=self._chunk_finished, on_flushed=self._maybe_claim)
        self.chunks = ChunkRunner(pool, self.owner, self.recorder, self.schedulers, stopping=self._stop.is_set,
                                  on_finished=self._chunk_finished, on_given_up=self._let_go)
        self._claim_wake = asyncio.Event()
        self._watch_wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._listener: asyncpg.Connection | None = None
        self._polling_only = False
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
            auto_decompress=True, raise_for_status=False)
        await self._listen()
        log.info("worker_started", worker=self.owner, providers=[p.name for p in self.providers],
                 want_requests=self.want_requests)
        for coro, name in ((self.recorder.run(), "recorder"), (self._claim_loop(), "claimer"),
                           (self._heartbeat_loop(), "heartbeat"), (self._watch_loop(), "watcher"),
                           (Deliveries(self.pool, self.settings).run(self._stop), "webhooks"),
                           (self._every(idempotency.PURGE_INTERVAL_SECONDS, self._purge_idempotency_keys),
                            "idempotency_purge")):
            self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming, let requests in flight finish for `grace` seconds, record what
        finished, give the rest back, exit."""
        self._stop.set()
        self._claim_wake.set()
        chunk_tasks = [c.task for c in self.held.values() if c.task is not None]
        if chunk_tasks:
            await asyncio.wait(chunk_tasks, timeout=grace)
        for c in list(self.held.values()):
            self._abort(c, release=True)
        await asyncio.gather(*chunk_tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self.recorder.drain(), timeout=30)
        except asyncio.TimeoutError:
            log.warning("recorder_drain_timeout")
        for t in (*self._tasks, *self._background):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        if self._listener is not None:
            try:
                await self._listener.remove_listener(CHANNEL, self._notified)
                await self.pool.release(self._listener)
            except (asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
                pass   # the connection went away with the database: nothing left to stop
        for scheduler in self.schedulers.values():
            await scheduler.close()
        if self._session is not None:
            await self._session.close()
        log.info("worker_stopped", worker=self.owner)

    def _notified(self, conn, pid, channel, payload) -> None:
        self._claim_wake.set()
        self._watch_wake.set()

    def _spawn(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def _every(self, interval: float, step, wake: asyncio.Event | None = None) -> None:
        while not self._stop.is_set():
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker_step_failed", step=step.__name__)
            waiter = wake.wait() if wake is not None else self._stop.wait()
            try:
                await asyncio.wait_for(waiter, interval)
            except asyncio.TimeoutError:
                pass
            if wake is not None:
                wake.clear()

    # --- due work ----------------------------------------------------------------------------

    async def _purge_idempotency_keys(self) -> None:
        await idempotency.purge_expired(self.pool)

    def _batch_done(self, batch_id: str) -> None:
        self._spawn(settle_batch(self.pool, batch_id, self.settings.chunk_size))

    # --- claiming ----------------------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; after a database outage, again (polling goes on
        meanwhile, so a lost wake-up only costs a poll interval)."""
        try:
            conn = await self.pool.acquire()
            try:
                await conn.add_listener(CHANNEL, self._notified)
                conn.add_termination_listener(self._listener_lost)
            except BaseException:
                await self.pool.release(conn)
                raise
        except Exception:
            if not self._polling_only:   # once per outage, not at every poll
                log.warning("listen_unavailable_polling_only")
            self._polling_only = True
            return
        self._listener, self._polling_only = conn, False

    def _listener_lost(self, conn) -> None:
        self._listener = None

    async def _claim_loop(self) -> None:
        await self._every(POLL_INTERVAL, self._claim, self._claim_wake)

    async def _claim(self) -> None:
        if self._listener is None and not self._stop.is_set():
            await self._listen()
        for provider in self.providers:
            await self._claim_for(provider.name)

    def _open_requests(self, provider: str) -> int:
        return sum(c.remaining if c.remaining >= 0 else c.count for c in self.held.values()
                   if (run := self.runs.get(c.batch_id)) is not None and run.claimed_for == provider)

    async def _claim_for(self, provider: str) -> None:
        while not self._stop.is_set() and len(self.held) < self.max_chunks:
            open_requests = self._open_requests(provider)
            if open_requests >= self.want[provider]:
                # Full. A project this worker holds nothing of may still have one chunk: its batch
                # starts now, beside the work already held, instead of after it (SPEC §11).
                held_projects = {r.project for r in self.runs.values() if r.claimed_for == provider}
                rows = await queue.claim(self.pool, self.owner, 1, self.settings.lease_seconds,
                                         self.routes[provider], skip_projects=held_projects)
            else:
                room = min(self.max_chunks - len(self.held),
                           max(1, math.ceil((self.want[provider] - open_requests) / self.settings.chunk_size)))
                rows = await queue.claim(self.pool, self.owner, room, self.settings.lease_seconds,
                                         self.routes[provider])
            if not rows:
                return
            await self._start_chunks(rows, provider)

    async def _start_chunks(self, rows: list[asyncpg.Record], provider: str) -> None:
        chunks = [HeldChunk(row) for row in rows]
        for chunk in chunks:  # held before any await: whatever happens next, it is released or run
            self.held[(chunk.batch_id, chunk.chunk_no)] = chunk
        for chunk in chunks:
            try:
                run = await self._run_of(chunk.batch_id, provider)
            except Exception:
                log.exception("batch_lookup_failed", batch_id=chunk.batch_id)
                self._abort(chunk, release=True)
                continue
            chunk.task = asyncio.create_task(self.chunks.run(chunk, run))
            log.info("chunk_claimed", batch_id=chunk.batch_id, chunk=chunk.chunk_no, epoch=chunk.epoch)

    async def _run_of(self, batch_id: str, claimed_for: str) -> BatchRun:
        run = self.runs.get(batch_id)
        if run is None:
            async with self.pool.acquire() as conn:
                state = await projections.get_batch(conn, batch_id)
            run = self.runs[batch_id] = BatchRun(state, provider_for(self.providers, state.model), claimed_for)
        return run

    def _maybe_claim(self) -> None:
        """After a flush: claim more as soon as a provider's open requests fall below what keeps
        it busy, not at the next poll."""
        if any(self._open_requests(p) < want for p, want in self.want.items()):
            self._claim_wake.set()

    def _chunk_finished(self, chunk: HeldChunk) -> None:
        self.held.pop((chunk.batch_id, chunk.chunk_no), None)
        self._forget_if_idle(chunk.batch_id)
        self._claim_wake.set()

    def _let_go(self, chunk: HeldChunk) -> None:
        """The chunk's task gave it up (its lease goes back, or is lost): no longer held, but
        heartbeated until the release is flushed, like a stopped one."""
        key = (chunk.batch_id, chunk.chunk_no)
        if self.held.get(key) is chunk:
            del self.held[key]
            if not chunk.lost:
                self.letting_go[key] = chunk
            self._forget_if_idle(chunk.batch_id)
            self._claim_wake.set()

    def _forget_if_idle(self, batch_id: str) -> None:
        if not any(c.batch_id == batch_id for c in self.held.values()):
            self.runs.pop(batch_id, None)

    def _abort(self, chunk: HeldChunk, *, release: bool) -> None:
        """No new request of the chunk starts; those in flight are cancelled; with `release`,
        the lease is given back once what finished is recorded (by its task as it ends)."""
        if self.held.pop((chunk.batch_id, chunk.chunk_no), None) is None:
            return
        chunk.aborted = True
        if not chunk.lost:
            self.letting_go[(chunk.batch_id, chunk.chunk_no)] = chunk
        chunk.release_wanted = chunk.release_wanted or release
        if chunk.task is not None and not chunk.task.done():
            chunk.task.cancel()
        elif release and not chunk.lost:
            self.recorder.release(chunk)
        self._forget_if_idle(chunk.batch_id)
        self._claim_wake.set()

    def _wake_parked(self, provider: str) -> None:
        """The paused provider answered a probe: the chunks given back for it are due now."""
        self._spawn(queue.wake(self.pool, self.chunks.take_parked_while_paused(provider)))
        self._claim_wake.set()

    # --- leases and cancellation -------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        await self._every(max(self.settings.lease_seconds / 3, 0.2), self._heartbeat)

    async def _heartbeat(self) -> None:
        held = list(self.held.values())
        letting_go = list(self.letting_go.values())
        if not held and not letting_go:
            return
        asked = held + letting_go
        alive = await queue.heartbeat(self.pool, self.owner, self.settings.lease_seconds,
                                      [c.batch_id for c in asked], [c.chunk_no for c in asked],
                                      [c.epoch for c in asked])
        for chunk in letting_go:
            # Released (or finished, or fenced off) by now: nothing of ours to keep alive.
            key = (chunk.batch_id, chunk.chunk_no)
            if alive.get(key) != chunk.epoch and self.letting_go.get(key) is chunk:
                del self.letting_go[key]
        # Judge only the chunks this heartbeat asked about: one claimed while it ran is not lost.
        for chunk in held:
            key = (chunk.batch_id, chunk.chunk_no)
            if self.held.get(key) is chunk and alive.get(key) != chunk.epoch:
                chunk.lost = True
                log.warning("lease_lost", batch_id=chunk.batch_id, chunk=chunk.chunk_no)
                self._abort(chunk, release=False)

    async def _watch_loop(self) -> None:
        await self._every(POLL_INTERVAL, self._watch, self._watch_wake)

    async def _watch(self) -> None:
        """Stop the requests of batches that are no longer running (cancelled, expired)."""
        batch_ids = {c.batch_id for c in self.held.values()}
        if not batch_ids:
            return
        now = time.time()
        statuses = await projections.batch_statuses(self.pool, list(batch_ids))
        for batch_id in batch_ids:
            run = self.runs.get(batch_id)
            status = statuses.get(batch_id)
            reason = domain.stop_reason(status, run.expires_at if run is not None else None, now)
            if reason is not None:
                if run is not None:
                    run.active = False
                    run.stopped_by = reason
                log.info("batch_stopping_requests", batch_id=batch_id, status=status)
                chunks = [c for c in self.held.values() if c.batch_id == batch_id]
                for chunk in chunks:
                    self._abort(chunk, release=True)
                # Requests cut short record their attempts as they unwind; only then the leases go back.
                await asyncio.gather(*(c.task for c in chunks if c.task is not None), return_exceptions=True)
                self._spawn(self._settle_after_release(batch_id))

    async def _settle_after_release(self, batch_id: str) -> None:
        await self.recorder.drain()
        await settle_batch(self.pool, batch_id, self.settings.chunk_size)
