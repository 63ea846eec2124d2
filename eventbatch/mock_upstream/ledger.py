"""The record of what the mock saw, for tests to read back: counts, statuses, concurrency, and
every request's arrival and answer.

Each request is one row: (started_at, answered_at, path, status, body digest, retry_after_ms sent
with a 429). Grouped by body digest, the rows are a request's attempts, which is how a test checks
that the gateway waited as long as each 429's `retry-after-ms` asked before trying that body again.
"""

from __future__ import annotations

import collections
import random
import time
from operator import itemgetter
from typing import Any, NamedTuple

_REQUEST_LOG_LIMIT = 200_000
# nginx's "client closed request": logged for requests whose client left before an answer.
CLIENT_GONE = 499


class Arrival(NamedTuple):
    started_at: float  # unix seconds, when the mock began reading the request
    answered_at: float  # unix seconds, when the answer was ready to write (or the client was gone)
    path: str
    status: int
    digest: bytes  # 16-byte blake2b of the raw body
    retry_after_ms: int | None  # what a 429 asked for; None for other statuses or a 429 without it

    def row(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "answered_at": self.answered_at, "path": self.path,
                "status": self.status, "body_sha": self.digest.hex(), "retry_after_ms": self.retry_after_ms}


def _early(before: Arrival, after: Arrival) -> bool:
    """Was `after` sent sooner than the 429 answered to `before` allowed?"""
    return (before.status == 429 and before.retry_after_ms is not None
            and after.started_at < before.answered_at + before.retry_after_ms / 1000)


class MockLedger:
    """What the mock has seen since start or the last reset."""

    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self.reset()

    def reseed(self, seed: int | None) -> None:
        """A new fault sequence from `seed`, as if the mock had started with it."""
        self._seed = seed
        self.faults = random.Random(seed)

    def reset(self) -> None:
        self.faults = random.Random(self._seed)
        self.requests = 0
        self.by_status: collections.Counter[int] = collections.Counter()
        # What is in flight at a reset is still in flight: it will finish and be subtracted.
        self.in_flight = getattr(self, "in_flight", 0)
        self.max_in_flight = self.in_flight
        self.successes = 0
        self.duplicate_successes = 0
        self.authorization_seen: set[str] = set()
        self.dropped_connections = 0  # open connections an outage cut
        self.first_request_at: float | None = None
        self.last_request_started_at: float | None = None
        self.succeeded_bodies: set[bytes] = set()
        # Only bodies carrying `mock.times` are counted, so memory stays with the tests that ask.
        self.sightings: dict[bytes, int] = {}
        self.log: collections.deque[Arrival] = collections.deque(maxlen=_REQUEST_LOG_LIMIT)

    def request_started(self, started_at: float, authorization: str | None) -> None:
        self.requests += 1
        if self.first_request_at is None:
            self.first_request_at = started_at
        self.last_request_started_at = started_at
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        if authorization is not None:
            self.authorization_seen.add(authorization)

    def request_finished(self, started_at: float, path: str, status: int, digest: bytes,
                         retry_after_ms: int | None = None) -> None:
        self.in_flight -= 1
        if status != CLIENT_GONE:
            self.by_status[status] += 1
        if 200 <= status < 300:
            self.successes += 1
            if digest in self.succeeded_bodies:
                self.duplicate_successes += 1
            else:
                self.succeeded_bodies.add(digest)
        self.log.append(Arrival(started_at, time.time(), path, status, digest, retry_after_ms))

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": {str(s): n for s, n in sorted(self.by_status.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "successes": self.successes,
            "duplicate_successes": self.duplicate_successes,
            "authorization_seen": sorted(self.authorization_seen),
            "dropped_connections": self.dropped_connections,
            "first_request_at": self.first_request_at,
            "last_request_started_at": self.last_request_started_at,
        }

    def _since(self, since: float, body_sha: str | None) -> list[Arrival]:
        """The log from `since` (unix seconds) on, in order of arrival; one body's if `body_sha`."""
        rows = [a for a in self.log if a.started_at >= since]
        if body_sha is not None:
            rows = [a for a in rows if a.digest.hex() == body_sha]
        rows.sort(key=itemgetter(0))
        return rows

    def rows(self, since: float, body_sha: str | None = None) -> list[dict[str, Any]]:
        return [a.row() for a in self._since(since, body_sha)]

    def attempts(self, since: float, body_sha: str | None = None) -> dict[str, Any]:
        """The log grouped by body, each body's attempts in order, with the retries that came
        sooner than the previous attempt's 429 allowed (`early_retries`)."""
        by_body: dict[bytes, list[Arrival]] = {}
        for arrival in self._since(since, body_sha):
            by_body.setdefault(arrival.digest, []).append(arrival)
        data = []
        for digest, tries in by_body.items():
            early = sum(_early(before, after) for before, after in zip(tries, tries[1:]))
            data.append({"body_sha": digest.hex(), "early_retries": early,
                         "attempts": [{"started_at": a.started_at, "answered_at": a.answered_at,
                                       "status": a.status, "retry_after_ms": a.retry_after_ms} for a in tries]})
        return {"bodies": len(data), "max_attempts": max((len(d["attempts"]) for d in data), default=0),
                "early_retries": sum(d["early_retries"] for d in data), "data": data}
