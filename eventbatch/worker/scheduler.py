"""When each request goes upstream (SPEC §7, §11): a provider's concurrency, adapted to its 429s;
its pause while it fails everything; the waits between a request's attempts; what counts as an
attempt. One ProviderScheduler per provider per worker process.

- **429** spends no attempt. The provider asked us to slow down: no new request goes to it until
  its Retry-After has passed, the request waits at least that long, and the concurrency is cut
  (AIMD: multiplied by BETA on the first 429 of requests sent since the last cut, further 429s
  of the same requests cut down to half; every success adds 1/limit, up to the configured
  `concurrency`).
- **Transient failures** (5xx, timeout, connection error) count against EVENTBATCH_MAX_ATTEMPTS
  while the provider answers others; the request waits a capped exponential backoff with
  jitter, then keeps its last answer as its outcome when the attempts are spent.
- **Pause.** When PAUSE_AFTER different requests in a row fail transiently with no answer between
  them, the provider is down: paused. Nothing is sent to it but a probe (GET /models) every few
  seconds; its requests spend no attempts and leave memory (they are parked in the database with
  their attempts, their chunks given back); other providers carry on. When a probe is answered
  the provider goes on trial (one request at a time) and is open again at its first success.
  A request failing alone (the same one again and again) never pauses its provider.
- **Parking.** A request whose next attempt is more than PARK_AFTER seconds away returns
  `Parked` instead of waiting: the worker saves it (attempts, counted, due time) and gives its
  chunk back until then, so a wait of minutes holds no lease and no slot.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Callable

import aiohttp
import structlog

from .. import events as ev
from ..metrics import PROVIDER_CONCURRENCY, PROVIDER_PAUSED, UPSTREAM_ATTEMPTS, UPSTREAM_LATENCY
from . import upstream
from .budget import MinuteBudget, estimate_tokens
from .fairshare import FairSlots
from .providers import Provider

log = structlog.get_logger("eventbatch.worker")

BETA = 0.9                 # the cut on a 429: gentle, as a single 429 is the usual signal of the limit
PAUSE_AFTER = 8            # different requests failing in a row, nothing answered between: paused
PROBE_FIRST, PROBE_MAX = 1.0, 5.0          # seconds between probes of a paused provider, doubling
PARKED_WHILE_PAUSED = (2.0, 10.0)          # how long a paused provider's chunks are given back for
PARK_AFTER = 5.0           # a wait longer than this parks the request instead of holding it in memory
RATE_LIMITED_BASE, RATE_LIMITED_MAX = 0.5, 30.0   # a 429 without Retry-After: the wait, doubling

OPEN, PAUSED, TRIAL = "open", "paused", "trial"


def _tokens_used(answer: upstream.Answer) -> int:
    if answer.kind != upstream.OK:
        return 0
    usage = upstream.usage_of(answer.body)
    return 0 if usage is None else usage.total_tokens


class RetryState:
    """What a request carries from one attempt to the next, and across leases (request_retries)."""
    __slots__ = ("attempts", "counted", "next_at", "rate_limited")

    def __init__(self, attempts: list[ev.Attempt] | None = None, counted: int = 0, next_at: float = 0.0):
        self.attempts = attempts if attempts is not None else []
        self.counted = counted          # attempts that count against max_attempts
        self.next_at = next_at          # unix time of the next attempt (0: now)
        self.rate_limited = 0           # 429s in a row, for the wait when no Retry-After came


class Parked:
    """A request that waits longer than PARK_AFTER: save it and give its chunk back until `due_at`."""
    __slots__ = ("state",)

    def __init__(self, state: RetryState):
        self.state = state

    @property
    def due_at(self) -> float:
        return self.state.next_at


class Backoff:
    """Capped exponential backoff with jitter between transient failures: the n-th wait is drawn
    from [d/2, d], d = min(cap, base * 2^(n-1)) (half the wait is certain, so waits grow
    into minutes; the other half spreads the retries of requests that failed together)."""

    def __init__(self, base: float, cap: float):
        self.base, self.cap = base, cap

    @classmethod
    def for_window(cls, settings) -> "Backoff":
        """The settings' backoff, its cap fitted to the window: all of a request's attempts take at
        most about a quarter of it, so one request its provider always fails ends with its last
        answer long before expiry (SPEC §7), with a shortened EVENTBATCH_WINDOW_SECONDS too. At the
        default 24 h window and 10 attempts the cap stays EVENTBATCH_RETRY_MAX_SECONDS."""
        cap = min(settings.retry_max_seconds, settings.window_seconds / (4 * max(settings.max_attempts, 1)))
        return cls(min(settings.retry_base_seconds, cap), cap)

    def delay(self, n: int) -> float:
        d = min(self.cap, self.base * 2 ** (max(n, 1) - 1))
        return random.uniform(d / 2, d)


class ProviderScheduler:
    def __init__(self, provider: Provider, session_of: Callable[[], aiohttp.ClientSession], *, max_attempts: int,
                 backoff: Backoff, timeout: float, on_resumed: Callable[[], None] = lambda: None,
                 budget: MinuteBudget | None = None):
        self.provider = provider
        self.budget = budget            # its rpm / tpm across the deployment, when it has any
        self._session_of = session_of
        self.max_attempts, self.backoff, self.timeout = max_attempts, backoff, timeout
        self.on_resumed = on_resumed
        # The requests in flight, shared fairly between the projects and batches held (fairshare.py).
        self.slots = FairSlots(provider.concurrency)
        self.limit = float(provider.concurrency)   # AIMD's figure; the slots take its whole part
        self._floor = self.limit
        self._epoch = 0                 # cuts so far; a ticket remembers the epoch it was sent in
        self._cooldown_until = 0.0      # monotonic: nothing new is sent before (a 429's Retry-After)
        self.state = OPEN
        self.paused_at = 0.0
        self._streak: set = set()       # requests failing in a row since the provider last answered
        self._probe: asyncio.Task | None = None
        self._shown: tuple | None = None
        self._publish()

    # --- state ---------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self.state == PAUSED

    def parked_while_paused(self) -> float:
        """How long to give back a paused provider's chunks: short at first (it may be a blip),
        longer as the pause goes on; a probe that is answered wakes them anyway."""
        low, high = PARKED_WHILE_PAUSED
        return min(high, max(low, time.monotonic() - self.paused_at))

    def _publish(self) -> None:
        """The state on /metrics, when it changed (a gauge set costs a lock: not per request)."""
        shown = (self.state == PAUSED, self.slots.limit)
        if shown != self._shown:
            self._shown = shown
            PROVIDER_PAUSED.set(self.provider.name, value=1.0 if shown[0] else 0.0)
            PROVIDER_CONCURRENCY.set(self.provider.name, value=float(shown[1]))

    def _set_limit(self) -> None:
        self.slots.set_limit(1 if self.state == TRIAL else max(1, int(self.limit)))

    def _pause(self) -> None:
        if self.state == PAUSED:
            return
        self.state, self.paused_at = PAUSED, time.monotonic()
        self._streak.clear()
        log.warning("provider_paused", provider=self.provider.name)
        self._publish()
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_answered(), name=f"probe-{self.provider.name}")

    def _answered(self) -> None:
        """The provider answered (anything but a transient failure): it is up."""
        self._streak.clear()
        if self.state != OPEN:
            log.info("provider_resumed", provider=self.provider.name,
                     paused_seconds=round(time.monotonic() - self.paused_at, 1))
            self.state = OPEN
            self._set_limit()

    async def _probe_until_answered(self) -> None:
        interval = PROBE_FIRST
        while self.state == PAUSED:
            await asyncio.sleep(interval)
            if await upstream.probe(self._session_of(), self.provider):
                if self.state == PAUSED:
                    # One real request at a time until one succeeds: a provider that answers its
                    # probe may still fail every request.
                    self.state = TRIAL
                    self._set_limit()
                    log.info("provider_on_trial", provider=self.provider.name)
                    self._publish()
                    self.on_resumed()
                return
            interval = min(PROBE_MAX, interval * 2)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)

    # --- AIMD ----------------------------------------------------------------------------------

    def _cut(self, sent_epoch: int) -> None:
        if sent_epoch == self._epoch:          # the first 429 of requests sent since the last cut
            self._epoch += 1
            self._floor = max(1.0, self.limit / 2)
            self.limit = max(1.0, self.limit * BETA)
        elif self.limit > self._floor:         # more of the same: cut on, down to half
            self.limit = max(self._floor, self.limit * BETA)
        self._set_limit()

    def _grow(self) -> None:
        if self.limit < self.provider.concurrency:
            self.limit = min(float(self.provider.concurrency), self.limit + 1.0 / self.limit)
            self._set_limit()

    # --- one request ---------------------------------------------------------------------------

    async def run(self, key: tuple[str, int], project: str, expires_at: float, url: str, body: bytes,
                  state: RetryState, may_start: Callable[[], bool]) -> upstream.Outcome | Parked | None:
        """Attempts of one request (key: batch id, index) until it has an outcome; Parked when
        its next attempt is far off (or its provider is paused); None when `may_start` said no
        before an attempt (its batch is being cancelled or expired). `state.attempts` holds
        every attempt made, also when this is cancelled."""
        while True:
            wait = state.next_at - time.time()
            if wait > PARK_AFTER:
                return Parked(state)
            if wait > 0:
                await asyncio.sleep(wait)
            if self.state == PAUSED:
                return self._park_paused(state)
            batch_id = key[0]
            await self.slots.acquire(project, batch_id, expires_at)
            try:
                while (cooling := self._cooldown_until - time.monotonic()) > 0:
                    await asyncio.sleep(cooling)
                if self.state == PAUSED:
                    return self._park_paused(state)
                if not may_start():
                    return None
                if self.budget is not None:
                    tokens = estimate_tokens(body) if self.budget.tpm else 0
                    minute = await self.budget.take(tokens)
                    if not may_start():     # the wait for the next minute may be long
                        self.budget.settle(minute, tokens, 0)
                        return None
                sent_epoch = self._epoch
                answer = await upstream.send(self._session_of(), self.provider, url, body, timeout=self.timeout,
                                             attempts=state.attempts)
            finally:
                self.slots.release(project, batch_id)
            if self.budget is not None:
                self.budget.settle(minute, tokens, _tokens_used(answer) if self.budget.tpm else 0)
            UPSTREAM_ATTEMPTS.inc("error" if answer.status_code is None else str(answer.status_code))
            UPSTREAM_LATENCY.observe(answer.attempt.duration_ms / 1000.0)
            done = self._after(key, answer, sent_epoch, state)
            self._publish()
            if done:
                return upstream.outcome(answer, state.attempts, self.provider, self.timeout)

    def _after(self, key, answer: upstream.Answer, sent_epoch: int, state: RetryState) -> bool:
        """The provider's state after an answer, and the request's: True when it is done."""
        now = time.time()
        if answer.kind in (upstream.OK, upstream.FINAL):
            self._answered()
            if answer.kind == upstream.OK:
                self._grow()
            return True
        if answer.kind == upstream.RATE_LIMITED:
            self._answered()
            self._cut(sent_epoch)
            state.rate_limited += 1
            if answer.retry_after is not None:
                self._cooldown_until = max(self._cooldown_until, time.monotonic() + answer.retry_after)
                state.next_at = now + answer.retry_after
            else:
                d = min(RATE_LIMITED_MAX, RATE_LIMITED_BASE * 2 ** (state.rate_limited - 1))
                state.next_at = now + random.uniform(d / 2, d)
            return False
        state.rate_limited = 0
        if self._counts(key, answer):
            state.counted += 1
            if state.counted >= self.max_attempts:
                return True
        state.next_at = now + max(self.backoff.delay(state.counted), answer.retry_after or 0.0)
        return False

    def _counts(self, key, answer: upstream.Answer) -> bool:
        """Does this failure count against the request's attempts? Not when its provider is
        paused, nor when it is the one that shows the provider is down."""
        if answer.kind == upstream.INTERNAL:
            return True                     # ours, not the provider's: it says nothing of its health
        if self.state == PAUSED:
            return False
        if self.state == TRIAL:
            self._pause()                   # it answered a probe, yet fails requests: counted
            return True
        self._streak.add(key)
        if len(self._streak) >= PAUSE_AFTER:
            self._pause()
            return False
        return True

    def _park_paused(self, state: RetryState) -> Parked:
        state.next_at = max(state.next_at, time.time() + self.parked_while_paused())
        return Parked(state)
