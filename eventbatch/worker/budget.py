"""A provider's `rpm` and `tpm` (SPEC §11), held for the whole deployment however many workers
run: one row per provider per minute (table provider_minutes, migrations/051) counts the
requests and tokens granted in that minute, and each worker takes grants from it, about a
second's worth at a time, in a short transaction that locks the row.

Tokens are estimated before a request is sent (its bytes / 4, plus the output it asks for at
most) and settled with the answer's usage: the difference is added to the minute it was taken
from, so under-estimates slow the rest of the minute and over-estimates give tokens back. Grants
are local to the minute they came from; what a worker has not used when the minute ends is
lost to it (at most a second's worth)."""

from __future__ import annotations

import asyncio
import math
import time

import asyncpg
import msgspec
import structlog

from ..sql import Q

log = structlog.get_logger("eventbatch.worker")

OUTPUT_GUESS = 256        # output tokens assumed for a request that names no limit on them


class _Limits(msgspec.Struct):
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_output_tokens: int | None = None


_limits = msgspec.json.Decoder(_Limits)


def estimate_tokens(body: bytes) -> int:
    """Tokens a request may cost: its prompt (about 4 bytes a token, JSON included, so rather
    more than less) and the output it allows."""
    try:
        limits = _limits.decode(body)
        output = limits.max_completion_tokens or limits.max_tokens or limits.max_output_tokens or OUTPUT_GUESS
    except (msgspec.DecodeError, msgspec.ValidationError):
        output = OUTPUT_GUESS
    return len(body) // 4 + max(output, 0)


class MinuteBudget:
    def __init__(self, pool: asyncpg.Pool, provider: str, rpm: int | None, tpm: int | None):
        self.pool, self.provider, self.rpm, self.tpm = pool, provider, rpm, tpm
        self._minute = None                 # the minute (database time) the local grant is from
        self._ends = 0.0                    # monotonic time that minute ends here
        self._requests = 0.0
        self._tokens = 0
        self._unsettled = 0                 # tokens to add to self._minute at the next grant
        self._lock = asyncio.Lock()

    def _has(self, tokens: int) -> bool:
        return (time.monotonic() < self._ends and self._requests >= 1
                and (self.tpm is None or self._tokens >= tokens))

    async def take(self, tokens: int):
        """Wait until one request of about `tokens` tokens may be sent; returns the minute it
        was granted in (to settle it with)."""
        tokens = min(tokens, self.tpm) if self.tpm else 0
        while not self._has(tokens):
            async with self._lock:          # one grant at a time; the others use what it brings
                if self._has(tokens):
                    break
                wait = await self._grant(tokens)
            if wait > 0:                    # the minute's budget is spent: the next one
                await asyncio.sleep(wait)
        self._requests -= 1
        self._tokens -= tokens
        return self._minute

    def settle(self, minute, estimated: int, used: int) -> None:
        """The answer came (`used` tokens by its usage; 0 when it was not served)."""
        if self.tpm and minute is not None and minute == self._minute:
            self._unsettled += used - min(estimated, self.tpm)

    async def _grant(self, tokens: int) -> float:
        """Take about a second's worth from this minute's row; the seconds to wait when none is
        left (0 when something was granted)."""
        want_requests = max(1, self.rpm // 60) if self.rpm else 0
        want_tokens = max(tokens, self.tpm // 60) if self.tpm else 0
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(Q.provider_minute_lock, self.provider)
            if row["minute"] != self._minute:
                if self._minute is not None:
                    await conn.execute(Q.provider_minute_forget, self.provider)
                self._minute, self._requests, self._tokens, self._unsettled = row["minute"], 0.0, 0, 0
            self._ends = time.monotonic() + row["left_s"]
            requests = min(want_requests, max(0, self.rpm - row["requests"])) if self.rpm else 0
            granted = min(want_tokens, max(0, self.tpm - row["tokens"] - self._unsettled)) if self.tpm else 0
            if self.tpm and granted < tokens:
                requests, granted = 0, 0    # not enough for this request: wait for the next minute
            if self.rpm and requests == 0:
                granted = 0
            await conn.execute(Q.provider_minute_take, self.provider, row["minute"], requests, granted + self._unsettled)
            self._unsettled = 0
        self._requests += requests if self.rpm else math.inf
        self._tokens += granted
        if self._has(tokens):
            return 0.0
        log.info("provider_minute_spent", provider=self.provider, rpm=self.rpm, tpm=self.tpm)
        return max(0.05, row["left_s"])
