"""Idempotency keys (SPEC §12.3) outside HTTP: how long a key holds, and the purge of those
past it. The mechanism itself is the API's middleware, api/idempotency.py."""

from __future__ import annotations

import asyncpg

from .sql import Q

RETENTION_SECONDS = 24 * 3600
PURGE_INTERVAL_SECONDS = 300.0
_PURGE_BATCH = 5000


async def purge_expired(pool: asyncpg.Pool) -> int:
    """Delete keys past their 24 hours (an expired key already counts as unused: this frees the
    space), a bounded number per statement."""
    total = 0
    while True:
        status = await pool.execute(Q.idempotency_purge, _PURGE_BATCH)
        n = int(status.split()[-1])
        total += n
        if n < _PURGE_BATCH:
            return total
