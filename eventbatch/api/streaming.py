"""Streamed answers (file content, /results): their pages are read from the database while the
body is being sent, after the status and headers went out.

A failure then (the database down or stalled past the API's wait) cannot become an error
envelope: the headers are sent, and aiohttp would write the error's status line and headers into
the body, or end a chunked body cleanly so that a truncated page looked whole (for /results,
whose x-results-cursor already promised every line up to it). So the connection is cut: the
client sees a body that ends early, an error it retries."""

from __future__ import annotations

from typing import AsyncIterable

import asyncpg
import structlog
from aiohttp import web

log = structlog.get_logger("eventbatch.api")


async def send_pages(request: web.Request, response: web.StreamResponse, pages: AsyncIterable[bytes],
                     **fields) -> web.StreamResponse:
    """Write `pages` to a prepared `response` and end it; cut the connection if reading them fails.
    A HEAD gets the headers alone: aiohttp leaves the body of a streamed answer to its handler,
    and a body after a HEAD's headers is read by the client as the next response (a file's bytes
    could pose as an answer to whatever it asks next on that connection)."""
    if request.method == "HEAD":
        await response.write_eof()
        return response
    sent = 0
    try:
        async for page in pages:
            await response.write(page)
            sent += len(page)
        await response.write_eof()
    except ConnectionResetError:
        raise                                      # the client left: the errors middleware says so
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("stream_cut", route=request.path, bytes_sent=sent, error=type(exc).__name__, **fields)
        if request.transport is not None:
            request.transport.abort()
    return response
