"""The worker: sweeps batches that are due for a transition, and runs requests upstream."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from .. import commands
from ..config import Settings

log = structlog.get_logger("eventbatch.worker")

SELECT_OPEN_BATCHES = "SELECT id, status FROM batch_view WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')"


class Worker:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, *, sweep_interval: float = 1.0):
        self.settings, self.pool, self.sweep_interval = settings, pool, sweep_interval
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="sweeper"))

    async def stop(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _sweep_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep_failed")
            try:
                await asyncio.wait_for(self._stop.wait(), self.sweep_interval)
            except asyncio.TimeoutError:
                pass

    async def sweep(self) -> None:
        """Validate what waits for validation and settle what is due (expiry, cancel, completion).
        Every step is safe to run in several workers at once."""
        rows = await self.pool.fetch(SELECT_OPEN_BATCHES)
        for r in rows:
            if r["status"] == "validating":
                await commands.validate_batch(self.pool, r["id"], self.settings.chunk_size)
            await commands.settle_batch(self.pool, r["id"])
