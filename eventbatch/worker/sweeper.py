"""Due work: validation waiting to run, and batches due to be settled (expiry, cancellation,
completion, a finalization a dead worker left). Safe to run in several processes at once:
validation takes an advisory lock, settling locks the batch's view row."""

from __future__ import annotations

import asyncio
from typing import Callable

import asyncpg
import structlog

from .. import batch as domain
from ..files import purge_expired_inputs
from ..sql import Q
from .finalizer import settle_batch
from .validating import validate_batch

log = structlog.get_logger("eventbatch.worker")

_OPEN = sorted(domain.OPEN)


class Sweeper:
    def __init__(self, pool: asyncpg.Pool, chunk_size: int, serves_model: Callable[[str], bool] | None = None):
        self.pool, self.chunk_size, self.serves_model = pool, chunk_size, serves_model

    async def sweep(self) -> None:
        """One pass over the open batches."""
        for r in await self.pool.fetch(Q.batch_view_with_status, _OPEN):
            try:
                if r["status"] == domain.VALIDATING:
                    await validate_batch(self.pool, r["id"], self.chunk_size, serves_model=self.serves_model)
                await settle_batch(self.pool, r["id"], self.chunk_size)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep_batch_failed", batch_id=r["id"])
        await purge_expired_inputs(self.pool)
