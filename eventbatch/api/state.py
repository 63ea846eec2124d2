"""The API's shared state: typed AppKeys and the background-task helper.

A module of its own so that app.py (which builds the app from the handler modules) and the
handler modules (which read this state) do not import each other."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

import asyncpg
import structlog
from aiohttp import web

from ..config import Settings
from ..pool import background_context

log = structlog.get_logger("eventbatch.api")

POOL = web.AppKey("pool", asyncpg.Pool)
SETTINGS = web.AppKey("settings", Settings)
TASKS = web.AppKey("tasks", set)
# An upload holds a connection only while it writes one piece (a short transaction each), a
# validation while it reads the file. Bounded, so that many uploads or big files leave the rest
# of the pool to the API.
UPLOAD_SLOTS = web.AppKey("upload_slots", asyncio.Semaphore)
VALIDATION_SLOTS = web.AppKey("validation_slots", asyncio.Semaphore)
# Whether a configured provider serves a model (providers.model_check); None: every model is.
SERVES_MODEL = web.AppKey("serves_model", Callable[[str], bool] | None)
PROJECT = web.RequestKey("project", str)  # the authenticated project


class RequestTransaction:
    """One connection and one transaction for a whole request, opened when the handler first
    asks for a connection (`connection(request)`). What a middleware writes beside the handler
    (the idempotency record, api/idempotency.py) then commits or rolls back together with what
    the handler wrote. `on_open` runs first in the new transaction (it may raise to stop the
    handler); background work the handler starts waits for the commit (`after_commit`)."""

    def __init__(self, pool: asyncpg.Pool, on_open: Callable[[asyncpg.Connection], Awaitable[None]]):
        self.pool, self.on_open = pool, on_open
        self.conn: asyncpg.Connection | None = None
        self._tx = None
        self.after_commit: list[Callable[[], Awaitable]] = []

    async def open(self) -> asyncpg.Connection:
        if self.conn is None:
            conn = await self.pool.acquire()
            try:
                tx = conn.transaction()
                await tx.start()
            except BaseException:
                await self.pool.release(conn)
                raise
            self.conn, self._tx = conn, tx
            await self.on_open(conn)   # on failure the caller's close(commit=False) rolls back
        return self.conn

    async def close(self, app: web.Application, *, commit: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                if commit:
                    await self._tx.commit()
                else:
                    await self._tx.rollback()
            finally:
                await self.pool.release(conn)
        work, self.after_commit = self.after_commit, []
        if commit:
            for make in work:
                spawn(app, make())


REQUEST_TRANSACTION = web.RequestKey("request_transaction", RequestTransaction)


@asynccontextmanager
async def connection(request: web.Request) -> AsyncIterator[asyncpg.Connection]:
    """The connection a handler writes with: the request's own transaction when a middleware
    opened one (an idempotent request), otherwise one from the pool for the block."""
    unit = request.get(REQUEST_TRANSACTION)
    if unit is not None:
        yield await unit.open()
        return
    async with request.app[POOL].acquire() as conn:
        yield conn


def spawn_after_commit(request: web.Request, make: Callable[[], Awaitable]) -> None:
    """Start background work on what the handler wrote once it is committed (at once when the
    handler's writes were their own transactions)."""
    unit = request.get(REQUEST_TRANSACTION)
    if unit is None:
        spawn(request.app, make())
    else:
        unit.after_commit.append(make)


def spawn(app: web.Application, coro: Awaitable) -> None:
    """Background work of the API process (validation, settling after a cancel)."""
    # Not bounded like the API call that starts it (pool.bounded_waits): it may take its time.
    task = asyncio.get_running_loop().create_task(coro, context=background_context())
    app[TASKS].add(task)

    def done(t: asyncio.Task) -> None:
        app[TASKS].discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("background_task_failed", error=repr(t.exception()))

    task.add_done_callback(done)
