"""The record of what the mock saw, for tests to read back: counts, statuses, concurrency, and
every request's arrival."""

from __future__ import annotations

import collections
import random
from typing import Any

_REQUEST_LOG_LIMIT = 200_000
# nginx's "client closed request": logged for requests whose client left before an answer.
CLIENT_GONE = 499


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
        self.in_flight = 0
        self.max_in_flight = 0
        self.successes = 0
        self.duplicate_successes = 0
        self.authorization_seen: set[str] = set()
        self.first_request_at: float | None = None
        self.last_request_started_at: float | None = None
        self.succeeded_bodies: set[bytes] = set()
        # Only bodies carrying `mock.times` are counted, so memory stays with the tests that ask.
        self.sightings: dict[bytes, int] = {}
        self.log: collections.deque[tuple[float, str, int, bytes]] = collections.deque(
            maxlen=_REQUEST_LOG_LIMIT)

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

    def request_finished(self, started_at: float, path: str, status: int, digest: bytes) -> None:
        self.in_flight -= 1
        if status != CLIENT_GONE:
            self.by_status[status] += 1
        if 200 <= status < 300:
            self.successes += 1
            if digest in self.succeeded_bodies:
                self.duplicate_successes += 1
            else:
                self.succeeded_bodies.add(digest)
        self.log.append((started_at, path, status, digest))

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": {str(s): n for s, n in sorted(self.by_status.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "successes": self.successes,
            "duplicate_successes": self.duplicate_successes,
            "authorization_seen": sorted(self.authorization_seen),
            "first_request_at": self.first_request_at,
            "last_request_started_at": self.last_request_started_at,
        }

    def rows(self, since: float) -> list[dict[str, Any]]:
        """The request log from `since` (unix seconds) on, in order of arrival."""
        rows = sorted(entry for entry in self.log if entry[0] >= since)
        return [{"started_at": s, "path": p, "status": st, "body_sha": d.hex()} for s, p, st, d in rows]
