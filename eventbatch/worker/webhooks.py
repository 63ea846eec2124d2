"""Sending webhook deliveries (SPEC §12.4); what is owed, signed and when is eventbatch/webhooks.py.

Every worker process runs one loop. It claims one due delivery at a time (SKIP LOCKED, with a
lease longer than an attempt may take, so no two workers send one delivery at once), sends it
in a task of its own (a few at a time, so one slow receiver does not hold the others up),
records the attempt in the log and schedules the next one until a 2xx or the retry window's
end. At least once: a worker that dies mid-attempt loses nothing, the lease lapses and the
delivery is due again.

Each attempt has a time limit (EVENTBATCH_WEBHOOK_TIMEOUT_SECONDS), follows no redirect, and
reads at most RESPONSE_CAP bytes of the answer: a receiver cannot hold a worker or fill its
memory.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import structlog

from .. import events as ev, webhooks
from ..config import Settings
from ..pool import unavailable
from ..sql import Q

log = structlog.get_logger("eventbatch.worker")

POLL_SECONDS = 1.0
IN_FLIGHT = 8
RESPONSE_CAP = 64 * 1024
LEASE_MARGIN_SECONDS = 30.0


class Deliveries:
    def __init__(self, pool: asyncpg.Pool, settings: Settings):
        self.pool, self.settings = pool, settings
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        self._tasks: set[asyncio.Task] = set()

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            away = False      # the database is away: said once, not every POLL_SECONDS
            try:
                while not stop.is_set():
                    try:
                        claimed = await self.claim_one(session)
                        if away:
                            away = False
                            log.info("webhook_claims_resumed")
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        if not unavailable(exc):
                            log.exception("webhook_claim_failed")
                        elif not away:
                            away = True
                            log.warning("webhook_claims_waiting_for_database", error=type(exc).__name__,
                                        detail=str(exc)[:200])
                        claimed = False
                    if not claimed:
                        try:
                            await asyncio.wait_for(stop.wait(), POLL_SECONDS)
                        except asyncio.TimeoutError:
                            pass
            finally:
                for t in self._tasks:
                    t.cancel()   # an attempt cut short is due again when its lease lapses
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def claim_one(self, session: aiohttp.ClientSession) -> bool:
        await self._slots.acquire()
        try:
            row = await self.pool.fetchrow(Q.webhook_delivery_claim,
                                           self.settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS)
        except BaseException:
            self._slots.release()
            raise
        if row is None:
            self._slots.release()
            return False
        task = asyncio.create_task(self.attempt(session, row))
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            self._slots.release()
            if not t.cancelled() and t.exception() is not None:
                log.error("webhook_attempt_failed", delivery_id=row["id"], error=repr(t.exception()))
        task.add_done_callback(done)
        return True

    async def attempt(self, session: aiohttp.ClientSession, d: asyncpg.Record) -> None:
        """One POST of a delivery, and its record."""
        at = time.time()
        body = bytes(d["payload"])
        headers = webhooks.signed_headers(d["secret"], d["id"], at, body)
        status: int | None = None
        error: str | None = None
        t0 = time.perf_counter()
        try:
            async with session.post(d["url"], data=body, headers=headers, allow_redirects=False) as r:
                status = r.status
                await _read_capped(r)
        except asyncio.TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_seconds:g}s"
        except aiohttp.ClientError as exc:
            error = _describe(exc)
        duration_ms = round((time.perf_counter() - t0) * 1000)
        delivered = status is not None and 200 <= status < 300
        next_at = None if delivered else webhooks.next_attempt_at(d["attempts"], d["owed_at"], time.time(),
                                                                  self.settings)
        attempt = ev.WebhookAttempted(delivery_id=d["id"], attempt=d["attempts"], at=at, duration_ms=duration_ms,
                                      status_code=status, error=error, delivered=delivered,
                                      next_attempt_at=next_at)
        async with self.pool.acquire() as conn:
            await webhooks.record_attempt(conn, d["id"], attempt)
        log.info("webhook_attempted", delivery_id=d["id"], attempt=d["attempts"], status_code=status, error=error,
                 delivered=delivered, gave_up=not delivered and next_at is None, duration_ms=duration_ms)


async def _read_capped(r: aiohttp.ClientResponse) -> None:
    """Read (and drop) at most RESPONSE_CAP bytes of the answer; the rest is never read (the
    connection is closed instead of reused)."""
    seen = 0
    while seen < RESPONSE_CAP:
        chunk = await r.content.read(RESPONSE_CAP - seen)
        if not chunk:
            return
        seen += len(chunk)
    r.close()


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the receiver closed the connection"
    return type(exc).__name__
