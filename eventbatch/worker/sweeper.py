"""Due work (SPEC §11): validation waiting to run, and batches due to be settled (expiry,
cancellation, completion, a finalization a dead worker left), done by every eventbatch process
(`api`, `worker`, `serve`: server.py starts one Sweeper per process).

Found by due time, not by looking at every open batch: batch_due (a projection written with the
view, batch.due_at) is indexed by when to look next, and a pass is one statement that takes
what is due, each batch to one sweeper (views.sql batch_due_claim). With nothing due a pass costs
that one statement, however many batches are open.

A pass takes only as many batches as it has free slots; each runs as a task of its own, so a
slow one (a 200 MB validation, settling a big batch) holds one slot and the others go on. Each
taken batch is this process's until its deadline (HOLD_SECONDS); a process that dies mid-work
leaves it to the others after that."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import asyncpg
import structlog

from .. import batch as domain, projections
from ..files import purge_expired_inputs
from ..metrics import DUE_STATEMENTS
from ..sql import Q
from .finalizer import settle_batch
from .validating import validate_batch

log = structlog.get_logger("eventbatch.worker")

INTERVAL = 1.0          # seconds between passes: a batch is worked within about this after it is due
# A taken batch is left to this sweeper for this long: past the slowest due work (a 200 MB
# validation, settling a big batch), short enough that a process that died mid-work delays an
# expiry by seconds. A second sweeper that takes a batch still being worked finds it locked (the
# validation's advisory lock, the view row) and looks again a second later.
HOLD_SECONDS = 15.0
AGAIN_SECONDS = 1.0     # a due batch nothing could move yet is looked at again after this
FAILED_AGAIN_SECONDS = 5.0   # ... and one whose work raised, after this
CONCURRENCY = 4         # due batches worked at once by one process


async def count_statements(conn: asyncpg.Connection) -> None:
    """Pool `init`: every statement the sweeper's connections send is counted
    (eventbatch_due_statements_total), so its cost can be watched as open batches grow."""
    conn.add_query_logger(lambda _query: DUE_STATEMENTS.inc())


async def open_pool(url: str, concurrency: int = CONCURRENCY) -> asyncpg.Pool:
    """The sweeper's own connections: a slow due batch never takes one the API or the worker
    needs, and its statements can be counted. A batch's work may hold two at once (settling a
    cancelled batch validates it first)."""
    from .. import db
    return await db.create_pool(url, min_size=1, max_size=2 * concurrency + 1, init=count_statements)


class Sweeper:
    def __init__(self, pool: asyncpg.Pool, chunk_size: int, serves_model: Callable[[str], bool] | None = None,
                 *, concurrency: int = CONCURRENCY, interval: float = INTERVAL):
        self.pool, self.chunk_size, self.serves_model = pool, chunk_size, serves_model
        self.concurrency, self.interval = concurrency, interval
        self._working: dict[str, asyncio.Task] = {}
        self._loop_task: asyncio.Task | None = None

    # --- as a service of the process -----------------------------------------------------------

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="sweeper")

    async def stop(self) -> None:
        """Stop taking due batches; work under way is cancelled (each batch's work is a
        transaction: nothing half done is left, and another process takes it after HOLD_SECONDS)."""
        tasks = [t for t in (self._loop_task, *self._working.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database away or stalled: the next pass tries again.
                log.warning("sweep_failed", error=type(exc).__name__, detail=str(exc)[:200])
            await asyncio.sleep(self.interval)

    # --- passes --------------------------------------------------------------------------------

    async def sweep_pass(self) -> list[str]:
        """Take what is due, as many as there are free slots, and start working them; returns
        the batch ids taken. Also the other due work of a pass (purging expired input files)."""
        free = self.concurrency - len(self._working)
        taken: list[str] = []
        if free > 0:
            now = time.time()
            deadline = now + HOLD_SECONDS
            taken = [r["batch_id"] for r in await self.pool.fetch(Q.batch_due_claim, now, free, deadline)]
            for batch_id in taken:
                task = asyncio.create_task(self._work(batch_id, deadline))
                self._working[batch_id] = task
                task.add_done_callback(lambda _t, b=batch_id: self._working.pop(b, None))
        await purge_expired_inputs(self.pool)
        return taken

    async def sweep(self) -> None:
        """One pass, waiting for the batches it took (for tests and one-off runs)."""
        taken = await self.sweep_pass()
        await asyncio.gather(*(self._working[b] for b in taken if b in self._working), return_exceptions=True)

    async def _work(self, batch_id: str, deadline: float) -> None:
        try:
            async with self.pool.acquire() as conn:
                state = await projections.get_batch(conn, batch_id)
            if state is not None and domain.validation_due(state):
                await validate_batch(self.pool, batch_id, self.chunk_size, serves_model=self.serves_model)
            state = await settle_batch(self.pool, batch_id, self.chunk_size)
            if state is not None and not state.terminal:
                due = domain.due_at(state)
                if due is not None and due <= time.time():
                    # Still due and nothing moved (leases to wait for, a validation elsewhere).
                    await self.pool.execute(Q.batch_due_again, batch_id, deadline, time.time() + AGAIN_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sweep_batch_failed", batch_id=batch_id)
            try:
                await self.pool.execute(Q.batch_due_again, batch_id, deadline, time.time() + FAILED_AGAIN_SECONDS)
            except Exception:
                pass   # the database is away: the batch is taken again after HOLD_SECONDS
