"""Slow clients are cut off, so that none holds a connection for as long as it likes (SPEC §14).

Three limits, all EVENTBATCH_UPLOAD_READ_TIMEOUT_SECONDS: a request's head must arrive within
it (api/runner.py, which closes the connection); an upload must bring each MiB within it
(api/uploads.py, 408); and a JSON body, at most client_max_size (1 MiB), must arrive whole
within it (here, 408). Before this a POST announcing 1,000 bytes that sent 20 was
held open for ever."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .errors import ApiError
from .state import SETTINGS


@web.middleware
async def body_deadline_middleware(request: web.Request, handler):
    # JSON is the only body the routes read whole. Uploads stream under their own per-MiB limit;
    # a body of another type is refused unread (and then drained by aiohttp for 10 s at most),
    # so an upload sent as application/octet-stream still hears how to send it, not a 413.
    if request.body_exists and request.content_type == "application/json":
        seconds = request.app[SETTINGS].upload_read_timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                await request.read()      # kept by aiohttp: the handler's read() gets these bytes
        except TimeoutError:
            raise ApiError(408, f"The request body did not arrive within {seconds:g} seconds. Send it again "
                                "over a faster connection.", close_connection=True) from None
    return await handler(request)
