"""The API's shared state: typed AppKeys and the background-task helper.

A module of its own so that app.py (which builds the app from the handler modules) and the
handler modules (which read this state) do not import each other."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import asyncpg
import structlog
from aiohttp import web

from ..config import Settings

log = structlog.get_logger("eventbatch.api")

POOL = web.AppKey("pool", asyncpg.Pool)
SETTINGS = web.AppKey("settings", Settings)
TASKS = web.AppKey("tasks", set)
KEY_CACHE = web.AppKey("key_cache", dict)
# An upload holds a connection (its transaction) while the client sends; a validation while it
# reads the file. Bounded, so that slow clients or big files leave the rest of the pool to the API.
UPLOAD_SLOTS = web.AppKey("upload_slots", asyncio.Semaphore)
VALIDATION_SLOTS = web.AppKey("validation_slots", asyncio.Semaphore)
# Whether a configured provider serves a model (providers.model_check); None: every model is.
SERVES_MODEL = web.AppKey("serves_model", Callable[[str], bool] | None)
PROJECT = web.RequestKey("project", str)  # the authenticated project


def spawn(app: web.Application, coro: Awaitable) -> None:
    """Background work of the API process (validation, settling after a cancel)."""
    task = asyncio.ensure_future(coro)
    app[TASKS].add(task)

    def done(t: asyncio.Task) -> None:
        app[TASKS].discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("background_task_failed", error=repr(t.exception()))

    task.add_done_callback(done)
