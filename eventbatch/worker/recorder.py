"""Group commit of request outcomes: many outcomes per transaction, one view update per batch
per flush, fenced by each chunk's lease epoch.

A flush takes, per batch (in id order, so concurrent flushers cannot deadlock): the batch view
row lock, then the lease rows of the chunks it writes for. Outcomes of a chunk whose lease this
worker no longer holds are dropped: another worker owns those requests now.

A flush takes at most FLUSH_MAX outcomes (FLUSH_MAX_BYTES of bodies), so a chunk's outcomes may
span flushes; its release or finish goes in the flush that takes its last queued outcome, never
an earlier one. A release that committed first would hand the lease back and the outcomes still
queued would be dropped as lost: finished requests sent again (paid twice) or, on cancel,
recorded as cut short."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Callable, NamedTuple

import asyncpg
import msgspec
import structlog

from .. import batch as domain, events as ev, projections, store
from . import queue
from ..metrics import REQUESTS

log = structlog.get_logger("eventbatch.worker")

FLUSH_EVERY = 0.005      # seconds an outcome may wait for company
FLUSH_MAX = 1000         # outcomes per transaction
FLUSH_MAX_BYTES = 32 * 1024 * 1024   # response bodies per transaction, far below Postgres' 1 GB message cap

_attempts = msgspec.json.Encoder()


class ParkedRequest(NamedTuple):
    """A request of a held chunk that waits for its next attempt (or for its paused provider)."""
    index: int
    custom_id: str
    attempts: list[ev.Attempt]
    counted: int
    due_at: float           # unix time


class HeldChunk:
    """A chunk this worker holds a lease on."""
    __slots__ = ("batch_id", "chunk_no", "first_index", "count", "byte_start", "byte_end", "epoch",
                 "remaining", "aborted", "task", "lost", "queued", "parked", "due_at",
                 "release_wanted")

    def __init__(self, row: asyncpg.Record):
        self.batch_id: str = row["batch_id"]
        self.chunk_no: int = row["chunk_no"]
        self.first_index: int = row["first_index"]
        self.count: int = row["count"]
        self.byte_start: int = row["byte_start"]
        self.byte_end: int = row["byte_end"]
        self.epoch: int = row["lease_epoch"]
        self.remaining = -1          # requests without a recorded outcome; known once the chunk is read
        self.aborted = False         # no new request of this chunk may start
        self.lost = False            # the lease is gone: nothing of this chunk may be recorded
        self.task: asyncio.Task | None = None
        self.queued = 0              # outcomes handed to the recorder and not yet taken by a flush
        # Requests waiting for their next attempt: saved when the chunk is given back, which is
        # claimable again at `due_at`.
        self.parked: list[ParkedRequest] = []
        self.due_at: float | None = None
        self.release_wanted = False  # give the lease back when its task ends


class Recorder:
    def __init__(self, pool: asyncpg.Pool, owner: str, on_batch_done: Callable[[str], None],
                 on_chunk_finished: Callable[[HeldChunk], None], on_flushed: Callable[[], None] = lambda: None):
        self.pool, self.owner = pool, owner
        self.on_batch_done, self.on_chunk_finished, self.on_flushed = on_batch_done, on_chunk_finished, on_flushed
        self._outcomes: list[tuple[HeldChunk, ev.RequestSucceeded | ev.RequestFailed]] = []
        self._finished: list[HeldChunk] = []     # chunks with nothing left to record
        self._releases: list[HeldChunk] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None

    def add(self, chunk: HeldChunk, outcome: ev.RequestSucceeded | ev.RequestFailed) -> None:
        chunk.queued += 1
        self._outcomes.append((chunk, outcome))
        self._idle.clear()
        self._wake.set()

    def finish(self, chunk: HeldChunk) -> None:
        """All of the chunk's requests have outcomes (recorded now or earlier): mark it done."""
        self._finished.append(chunk)
        self._idle.clear()
        self._wake.set()

    def release(self, chunk: HeldChunk) -> None:
        """Give the chunk's lease back after what it finished is recorded, with its parked
        requests saved and claimable again from its `due_at` (if set)."""
        self._releases.append(chunk)
        self._idle.clear()
        self._wake.set()

    async def drain(self) -> None:
        """Wait until everything handed over is flushed (or the recorder has stopped)."""
        while (self._outcomes or self._finished or self._releases or not self._idle.is_set()) \
                and not (self._task is not None and self._task.done()):
            self._wake.set()
            await asyncio.sleep(0.01)

    async def run(self) -> None:
        self._task = asyncio.current_task()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._outcomes) < FLUSH_MAX:
                await asyncio.sleep(FLUSH_EVERY)
            take, size = 0, 0
            for _, o in self._outcomes[:FLUSH_MAX]:
                size += len(o.body)
                take += 1
                if size >= FLUSH_MAX_BYTES:
                    break
            outcomes, self._outcomes = self._outcomes[:take], self._outcomes[take:]
            for chunk, _ in outcomes:
                chunk.queued -= 1
            # A chunk with outcomes still queued is released (or finished) by a later flush.
            finished = [c for c in self._finished if not c.queued]
            releases = [c for c in self._releases if not c.queued]
            self._finished = [c for c in self._finished if c.queued]
            self._releases = [c for c in self._releases if c.queued]
            if not (outcomes or finished or releases):
                self._idle.set()
                continue
            try:
                await self._flush(outcomes, finished, releases)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Nothing was committed: put everything back and try again shortly.
                log.exception("outcome_flush_failed", outcomes=len(outcomes))
                for chunk, _ in outcomes:
                    chunk.queued += 1
                self._outcomes[:0] = outcomes
                self._finished[:0] = finished
                self._releases[:0] = releases
                await asyncio.sleep(0.5)
            if self._outcomes or self._finished or self._releases:
                self._wake.set()
            else:
                self._idle.set()

    async def _flush(self, outcomes, finished, releases) -> None:
        by_batch: dict[str, list] = defaultdict(list)
        for chunk, o in outcomes:
            by_batch[chunk.batch_id].append((chunk, o))
        for chunk in finished + releases:
            by_batch.setdefault(chunk.batch_id, [])
        batches_done: list[str] = []
        lost: list[HeldChunk] = []
        recorded: dict[str, int] = defaultdict(int)   # by request_counts field: the metric's label
        decrements: dict[HeldChunk, int] = defaultdict(int)
        async with self.pool.acquire() as conn, conn.transaction():
            for batch_id in sorted(by_batch):
                items = by_batch[batch_id]
                chunks = {c for c, _ in items} | {c for c in finished + releases if c.batch_id == batch_id}
                state = await projections.lock_batch(conn, batch_id)
                leases = await queue.lock_leases(conn, batch_id, [c.chunk_no for c in {*chunks}])
                held = set()
                with_outcomes = {c for c, _ in items}
                for c in chunks:
                    r = leases.get(c.chunk_no)
                    if r is not None and r["lease_owner"] == self.owner and r["lease_epoch"] == c.epoch \
                            and not r["done"]:
                        held.add(c)
                    elif r is not None and r["done"] and c not in with_outcomes:
                        pass    # a release of a chunk already done (its last outcome came first): nothing to do
                    else:
                        lost.append(c)
                if state is None or state.terminal:
                    continue
                keep = [o for c, o in items if c in held]
                if keep:
                    inserted = await store.append_outcomes(conn, batch_id, keep)
                    new = [o for o in keep if o.index in inserted]
                    if new:
                        state, before = domain.fold(state, new), state
                        await projections.save_batch(conn, state, before=before)   # due time mostly unmoved
                        for o in new:
                            recorded[domain.counted_as(o)] += 1
                for c, _ in items:
                    if c in held:
                        decrements[c] += 1
                done = [c.chunk_no for c in held if c in finished or c.remaining - decrements[c] == 0 and
                        c.remaining >= 0]
                if done:
                    await queue.mark_done(conn, batch_id, done)
                    if not await queue.any_open(conn, batch_id):
                        batches_done.append(batch_id)
                rel = [c for c in releases if c in held and c.chunk_no not in done]
                if rel:
                    await self._give_back(conn, batch_id, rel)
        self._after_flush(decrements, lost, recorded, batches_done)

    async def _give_back(self, conn, batch_id: str, chunks: list[HeldChunk]) -> None:
        now = time.time()
        parked = [p for c in chunks for p in c.parked]
        if parked:
            await queue.save_retries(conn, batch_id, [p.index for p in parked],
                                     [_attempts.encode(p.attempts) for p in parked], [p.counted for p in parked],
                                     [max(0.0, p.due_at - now) for p in parked])
        await queue.release_until(conn, batch_id, [c.chunk_no for c in chunks], self.owner,
                                  [None if c.due_at is None else max(0.0, c.due_at - now) for c in chunks])

    def _after_flush(self, decrements, lost, recorded, batches_done) -> None:
        for c, n in decrements.items():
            c.remaining -= n
            if c.remaining == 0:
                self.on_chunk_finished(c)
        for c in lost:
            if not c.lost:
                c.lost = c.aborted = True
                log.warning("lease_lost", batch_id=c.batch_id, chunk=c.chunk_no)
                if c.task is not None:
                    c.task.cancel()
        for outcome, n in recorded.items():
            if n:
                REQUESTS.inc(outcome, amount=n)
        for b in batches_done:
            self.on_batch_done(b)
        self.on_flushed()
