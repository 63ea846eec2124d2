"""Faults: the provider's state (a rate-limit window, a limit on requests in flight, an outage
window), the ones a request asks for in its `"mock"` object, and the random ones of the settings.

The provider's state comes first: while it is rate limited or full, every request gets 429,
marked or not. Then a request's own `"mock"` object wins over the random faults, so a test can
mark one request while the rest of the traffic sees the configured fault rates.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .ledger import MockLedger
from .settings import MockSettings

_RANDOM_FAILURES = (500, 502, 503)


class Window:
    """A span of monotonic time in which a fault holds; empty until opened."""

    __slots__ = ("start", "end")

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def open(self, after: float, seconds: float, now: float) -> None:
        """From `after` seconds past `now`, for `seconds` (0 empties it, ending a fault in progress)."""
        self.start = now + after
        self.end = self.start + seconds

    def holds(self, now: float) -> bool:
        return self.start <= now < self.end

    def next_edge(self, now: float) -> float | None:
        """The next moment the fault starts or ends, if one is to come."""
        if self.end <= self.start:
            return None
        if now < self.start:
            return self.start
        return self.end if now < self.end else None

    def view(self, now: float) -> dict[str, Any]:
        """As unix times, for /_mock/stats."""
        if self.end <= self.start:
            return {"active": False, "starts_at": None, "ends_at": None}
        unix = time.time() - now
        return {"active": self.holds(now), "starts_at": unix + self.start, "ends_at": unix + self.end}


class ProviderState:
    """The faults that belong to the provider rather than to one request."""

    def __init__(self, settings: MockSettings) -> None:
        now = time.monotonic()
        self.rate_limit = Window()
        self.rate_limit.open(settings.rate_limit_after, settings.rate_limit_seconds, now)
        self.outage = Window()
        self.outage.open(settings.outage_after, settings.outage_seconds, now)
        # Set when the outage window changes, to wake the follower that closes and opens the socket;
        # without one (an app served by other means) an outage cannot be had.
        self.outage_changed = asyncio.Event()
        self.outages_followed = False
        # Requests being answered now, less those turned away for `max_in_flight`.
        self.serving = 0

    def admit(self, settings: MockSettings) -> bool:
        """Take a request in, or turn it away with a 429 (False) while limited or full."""
        if self.rate_limit.holds(time.monotonic()):
            return False
        if settings.max_in_flight is not None and self.serving >= settings.max_in_flight:
            return False
        self.serving += 1
        return True

    def view(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"rate_limit_window": self.rate_limit.view(now), "outage_window": self.outage.view(now)}


class BadControl(ValueError):
    """The request's `"mock"` object cannot be followed; the request gets a 400 with this message."""


class Plan:
    """How to answer one request: an extra delay, then a forced status, a hang, or the real answer."""

    __slots__ = ("status", "latency_ms", "retry_after_ms", "hang", "echo_key")

    def __init__(self, status: int | None, latency_ms: float, retry_after_ms: int | None, hang: bool,
                 echo_key: bool = False) -> None:
        self.status = status
        self.latency_ms = latency_ms
        self.retry_after_ms = retry_after_ms
        self.hang = hang
        self.echo_key = echo_key


def plan_for(body: dict, digest: bytes, settings: MockSettings, ledger: MockLedger) -> Plan:
    control = body.get("mock")
    if control is None:
        return Plan(_random_fault(settings, ledger), settings.latency_ms, settings.retry_after_ms, False)
    return _requested(control, digest, settings, ledger)


def _random_fault(settings: MockSettings, ledger: MockLedger) -> int | None:
    if settings.rate_limit_rate <= 0 and settings.fail_rate <= 0:
        return None
    # One draw split into bands, so each rate is a fraction of all requests.
    draw = ledger.faults.random()
    if draw < settings.rate_limit_rate:
        return 429
    if draw < settings.rate_limit_rate + settings.fail_rate:
        return ledger.faults.choice(_RANDOM_FAILURES)
    return None


def _requested(control: object, digest: bytes, settings: MockSettings, ledger: MockLedger) -> Plan:
    """The body's `"mock"` object:

        {"status": 400}                 always answer 400 with an OpenAI error body
        {"status": 503, "times": 2}     503 for the first 2 sightings of this exact body, then normal
        {"latency_ms": 500}             extra delay for this request
        {"hang": true}                  never answer; held until the client goes away
        {"status": 429, "retry_after_ms": 1500}   429 with a chosen retry delay
        {"echo_key": true}              answer normally, but echo the caller's bearer key in
                                        `x-request-id` and, JSON-escaped, in the body (as a
                                        careless provider might): the gateway must scrub it
    """
    if not isinstance(control, dict):
        raise BadControl("`mock` must be an object.")
    if control.get("hang"):
        return Plan(None, 0.0, settings.retry_after_ms, True)
    forced: int | None = None
    status = control.get("status")
    if status is not None:
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise BadControl("`mock.status` must be an integer from 400 to 599.")
        times = control.get("times")
        if times is not None and (not isinstance(times, int) or isinstance(times, bool)):
            raise BadControl("`mock.times` must be an integer.")
        if times is None:
            forced = status
        else:
            seen = ledger.sightings.get(digest, 0) + 1
            ledger.sightings[digest] = seen
            if seen <= times:
                forced = status
    latency_ms = settings.latency_ms
    extra = control.get("latency_ms")
    if isinstance(extra, (int, float)):
        latency_ms += extra
    retry_after_ms = settings.retry_after_ms
    chosen_retry = control.get("retry_after_ms")
    if isinstance(chosen_retry, int):
        retry_after_ms = chosen_retry
    return Plan(forced, latency_ms, retry_after_ms, False, bool(control.get("echo_key")))
