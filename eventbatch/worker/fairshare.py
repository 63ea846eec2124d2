"""A provider's request slots inside one worker, shared fairly (SPEC §11).

The claim (queue.sql chunk_claim) shares the queue across projects; this shares what a worker
has claimed. A worker holds a few times its concurrency in open requests, so with a plain FIFO
semaphore a small batch claimed behind a big one would queue behind all of the big one's held
requests. Here a free slot goes to the project with the fewest requests in flight (ties: the one
served longest ago), and within it to the batch with the fewest in flight (ties: the earliest
expires_at): a newcomer quickly gets its share, and then shares round-robin.

`FairSlots.slot(project, batch_id, expires_at)` is an async context manager taken for each
attempt, where a semaphore was (upstream.call takes either)."""

from __future__ import annotations

import asyncio
import collections
import itertools


class FairSlots:
    def __init__(self, limit: int):
        self.limit = limit
        self.busy = 0
        self._busy_projects: collections.Counter[str] = collections.Counter()
        self._busy_batches: collections.Counter[str] = collections.Counter()
        # project -> batch -> waiters in arrival order
        self._waiting: dict[str, dict[str, collections.deque[asyncio.Future]]] = {}
        self._expires: dict[str, float] = {}
        self._served: dict[str, int] = {}
        self._ticks = itertools.count(1)

    def slot(self, project: str, batch_id: str, expires_at: float) -> "_Slot":
        return _Slot(self, project, batch_id, expires_at)

    def set_limit(self, limit: int) -> None:
        """A new concurrency (an adaptive limit may move it); waiters get what it frees."""
        self.limit = limit
        self._grant()

    @property
    def waiting(self) -> int:
        return sum(len(q) for batches in self._waiting.values() for q in batches.values())

    async def acquire(self, project: str, batch_id: str, expires_at: float) -> None:
        if self.busy < self.limit and not self._waiting:
            self._take(project, batch_id)
            return
        fut = asyncio.get_running_loop().create_future()
        self._expires[batch_id] = expires_at
        self._waiting.setdefault(project, {}).setdefault(batch_id, collections.deque()).append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(project, batch_id)      # granted as we were cancelled: give it on
            else:
                self._forget(project, batch_id, fut)
            raise

    def release(self, project: str, batch_id: str) -> None:
        self.busy -= 1
        self._busy_projects[project] -= 1
        if self._busy_projects[project] <= 0:
            del self._busy_projects[project]
        self._busy_batches[batch_id] -= 1
        if self._busy_batches[batch_id] <= 0:
            del self._busy_batches[batch_id]
        self._grant()

    def _take(self, project: str, batch_id: str) -> None:
        self.busy += 1
        self._busy_projects[project] += 1
        self._busy_batches[batch_id] += 1
        self._served[project] = next(self._ticks)

    def _forget(self, project: str, batch_id: str, fut: asyncio.Future) -> None:
        batches = self._waiting.get(project)
        if batches is None or batch_id not in batches:
            return
        try:
            batches[batch_id].remove(fut)
        except ValueError:
            pass
        self._drop_empty(project, batch_id)

    def _drop_empty(self, project: str, batch_id: str) -> None:
        batches = self._waiting[project]
        if not batches[batch_id]:
            del batches[batch_id]
            self._expires.pop(batch_id, None)
        if not batches:
            del self._waiting[project]

    def _grant(self) -> None:
        while self.busy < self.limit and self._waiting:
            project = min(self._waiting, key=lambda p: (self._busy_projects[p], self._served.get(p, 0)))
            batches = self._waiting[project]
            batch_id = min(batches, key=lambda b: (self._busy_batches[b], self._expires.get(b, 0.0)))
            fut = batches[batch_id].popleft()
            self._drop_empty(project, batch_id)
            if fut.done():   # cancelled while waiting
                continue
            self._take(project, batch_id)
            fut.set_result(None)
        if not self._waiting:
            # Forget who was served when nobody waits: the table stays as small as the projects held.
            self._served = {p: t for p, t in self._served.items() if p in self._busy_projects}


class _Slot:
    __slots__ = ("slots", "project", "batch_id", "expires_at")

    def __init__(self, slots: FairSlots, project: str, batch_id: str, expires_at: float):
        self.slots, self.project, self.batch_id, self.expires_at = slots, project, batch_id, expires_at

    async def __aenter__(self) -> None:
        await self.slots.acquire(self.project, self.batch_id, self.expires_at)

    async def __aexit__(self, *exc) -> None:
        self.slots.release(self.project, self.batch_id)
