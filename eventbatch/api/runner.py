"""ApiRunner: an aiohttp AppRunner whose own errors answer in OpenAI's envelope too.

A request aiohttp's HTTP parser refuses (raw UTF-8 or control bytes in the path, a request line
or header over 8,190 bytes, a malformed header) never reaches the app or its middlewares: the
connection's RequestHandler answers it with a plain-text page. aiohttp has no setting for that
answer, so the runner's server makes handlers that override RequestHandler.handle_error, the
one place every such answer is made."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..metrics import HTTP_REQUESTS
from .errors import error_response, parse_error_reason
from .state import SETTINGS

log = structlog.get_logger("eventbatch.api")

_MESSAGES = {
    500: "The server had an error while processing your request. Retry, and report it if it persists.",
    504: "The server took too long to answer. Retry in a moment.",
}


# The head's timer reads RequestHandler's own state (aiohttp 3.14); without it the timer is off
# rather than wrong (tests/e2e/test_slow_uploads.py shows it on).
_HANDLER_STATE = ("_waiter", "_messages", "_request_count", "_force_close")
HEAD_TIMER = all(name in RequestHandler.__slots__ for name in _HANDLER_STATE)


class _EnvelopeHandler(RequestHandler):
    # A request's head (request line and headers) must arrive within this many seconds of its
    # first byte, or the connection is closed: aiohttp has no such limit, so a client sending its
    # headers a byte at a time (slowloris) held a connection, and a file descriptor, for ever.
    # Set by the server from EVENTBATCH_UPLOAD_READ_TIMEOUT_SECONDS (the body's limit, too).
    head_seconds: float = 30.0
    _head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if not HEAD_TIMER:
            return super().data_received(data)
        # Bytes begin a head only while the handler waits for the next request (or before its
        # first). Not while a request runs, nor while aiohttp drains a body its handler left
        # unread: body bytes then are no head (and once armed, only a head or the end of the
        # connection disarms the timer: an idle kept-alive connection was closed).
        waiting = self._waiter is not None and not self._waiter.done()
        between = (waiting or self._request_count == 0) and not self._messages
        parsed = self._request_count
        super().data_received(data)
        if self._request_count > parsed:
            self._head_done()
        elif between and self._head_timer is None and not self._force_close:
            self._head_timer = self._loop.call_later(self.head_seconds, self._head_too_slow)

    def _head_done(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        log.info("http_head_too_slow", seconds=self.head_seconds)
        HTTP_REQUESTS.inc("-", "unparsed", 408)
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._head_done()
        super().connection_lost(exc)

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:   # an answer is under way: let aiohttp drop the connection
            return super().handle_error(request, status, exc, message)
        if status >= 500:
            log.error("http_server_error", status=status, error=type(exc).__name__ if exc else None,
                      exc_info=exc)
            text = _MESSAGES.get(status, _MESSAGES[500])
        else:
            # A request that is not HTTP we can read: the client's fault, one line, no traceback.
            log.info("http_unparseable_request", status=status, error=type(exc).__name__ if exc else None)
            text = f"The request could not be read: {parse_error_reason(exc) if exc else 'malformed'}."
        HTTP_REQUESTS.inc("-", "unparsed", status)
        response = error_response(status, text)
        response.force_close()
        return response


class _EnvelopeServer(web.Server):
    head_seconds = _EnvelopeHandler.head_seconds

    def __call__(self) -> RequestHandler:
        handler = _EnvelopeHandler(self, loop=self._loop, **self._kwargs)
        handler.head_seconds = self.head_seconds
        return handler


class ApiRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        envelope = _EnvelopeServer(server.request_handler, request_factory=server.request_factory,
                                   handler_cancellation=server.handler_cancellation, loop=server._loop,
                                   **server._kwargs)
        envelope.head_seconds = self.app[SETTINGS].upload_read_timeout_seconds
        return envelope
