"""OpenAI's error envelope, for every error the API returns."""

from __future__ import annotations

from typing import Sequence

import msgspec
from aiohttp import web


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class Envelope(msgspec.Struct):
    error: ErrorBody


_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, close_connection: bool = False, headers: dict | None = None):
        super().__init__(message)
        self.headers = headers
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        # For an answer given before the body was read to its end: the rest is not waited for.
        self.close_connection = close_connection

    def response(self, headers: dict | None = None) -> web.Response:
        response = error_response(self.status, self.message, param=self.param, code=self.code, type=self.type,
                                  headers={**(self.headers or {}), **(headers or {})} or None)
        if self.close_connection:
            response.force_close()
        return response


def _sendable(text: str | None) -> str | None:
    """Text that JSON can carry: a message or param that echoes what the client sent may hold
    lone surrogates (aiohttp's stand-ins for bytes that are not UTF-8), which the encoder
    refuses: shown as \\udcff escapes instead, so the 400 does not become a 500."""
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   type: str | None = None, headers: dict | None = None) -> web.Response:
    body = Envelope(ErrorBody(message=_sendable(message), type=type or _TYPES.get(status, "invalid_request_error"),
                              param=_sendable(param), code=code))
    return web.Response(status=status, body=msgspec.json.encode(body), content_type="application/json",
                        headers=headers)


class ClientGone(Exception):
    """The client closed the connection before its request was read: there is no one to answer,
    and nothing went wrong on our side. Logged as one line (the event named here), no traceback."""

    def __init__(self, event: str, **fields):
        super().__init__(event)
        self.event, self.fields = event, fields


def parse_error_reason(exc: Exception) -> str:
    """What was wrong, for an aiohttp parser error, in words a person can act on (the parser's
    own message repeats the offending bytes)."""
    from aiohttp.http_exceptions import ContentEncodingError, InvalidHeader, InvalidURLError, LineTooLong
    if isinstance(exc, ContentEncodingError) or "content-encoding" in str(exc).lower():
        return content_encoding_reason(exc)
    if isinstance(exc, LineTooLong):
        return "a line is longer than 8,190 bytes (ids, query strings, headers and filenames must be shorter)"
    if isinstance(exc, InvalidURLError) or "url" in str(exc).lower():
        return "the URL holds bytes that are not allowed; percent-encode anything outside printable ASCII"
    if isinstance(exc, InvalidHeader) or "header" in str(exc).lower():
        return "a header holds control characters or bytes outside printable ASCII"
    return "it is not well-formed HTTP"


def content_encoding_reason(exc: Exception) -> str:
    # Checked before the header case: the parser's words for an encoding it lacks ("brotli (br)")
    # come while it reads the headers, but what the client must change is the encoding.
    text = str(exc).lower()
    if "(br)" in text or "(zstd)" in text:
        return ("the body's Content-Encoding is not supported here; send it uncompressed, or as gzip or deflate "
                "with a matching Content-Encoding header")
    return ("the body does not decode as its Content-Encoding header says; send it uncompressed (without "
            "Content-Encoding) or compressed exactly as that header names (gzip or deflate)")


def payload_error(exc: Exception, param: str | None = None) -> ApiError:
    """A 400 for aiohttp's RequestPayloadError: the body's bytes could not be turned into the body
    (bad compression, bad chunked framing). The parser's own error is its cause."""
    cause = exc.__cause__ or exc
    if "content-encoding" in f"{cause} {exc}".lower():
        reason = content_encoding_reason(cause)
    else:
        reason = ("it is not well-formed (bad chunked framing, or fewer bytes than its Content-Length); "
                  "send the whole body again")
    return ApiError(400, f"The request body could not be read: {reason}.", param=param, close_connection=True)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def invalid_value(param: str, value: str, supported: Sequence[str]) -> ApiError:
    """A value outside an enumeration, in OpenAI's words ("Invalid value: 'x'. Supported values
    are: 'a', 'b', and 'c'.") and with its code."""
    quoted = [f"'{s}'" for s in supported]
    listed = (quoted[0] if len(quoted) == 1 else " and ".join(quoted) if len(quoted) == 2
              else ", ".join(quoted[:-1]) + ", and " + quoted[-1])
    shown = value if len(value) <= 100 else value[:100] + "…"
    return ApiError(400, f"Invalid value: '{shown}'. Supported values are: {listed}.", param=param,
                    code="invalid_value")


def not_found(kind: str, id_: str) -> ApiError:
    # One answer for an id of another project, a deleted one and one that never existed; the
    # words are OpenAI's ("No batch found with id 'batch_…'.").
    return ApiError(404, f"No {kind} found with id '{id_}'.", param="id" if kind == "batch" else "file_id",
                    code=None)
