"""ApiRunner: an aiohttp AppRunner whose own errors answer in OpenAI's envelope too.

A request aiohttp's HTTP parser refuses (raw UTF-8 or control bytes in the path, a request line
or header over 8,190 bytes, a malformed header) never reaches the app or its middlewares: the
connection's RequestHandler answers it with a plain-text page. aiohttp has no setting for that
answer, so the runner's server makes handlers that override RequestHandler.handle_error, the
one place every such answer is made."""

from __future__ import annotations

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..metrics import HTTP_REQUESTS
from .errors import error_response, parse_error_reason

log = structlog.get_logger("eventbatch.api")

_MESSAGES = {
    500: "The server had an error while processing your request. Retry, and report it if it persists.",
    504: "The server took too long to answer. Retry in a moment.",
}


class _EnvelopeHandler(RequestHandler):
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
    def __call__(self) -> RequestHandler:
        return _EnvelopeHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _EnvelopeServer(server.request_handler, request_factory=server.request_factory,
                               handler_cancellation=server.handler_cancellation, loop=server._loop,
                               **server._kwargs)
