"""OpenAI's error envelope, for every error the API returns."""

from __future__ import annotations

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
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")

    def response(self, headers: dict | None = None) -> web.Response:
        return error_response(self.status, self.message, param=self.param, code=self.code, type=self.type,
                              headers=headers)


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   type: str | None = None, headers: dict | None = None) -> web.Response:
    body = Envelope(ErrorBody(message=message, type=type or _TYPES.get(status, "invalid_request_error"),
                              param=param, code=code))
    return web.Response(status=status, body=msgspec.json.encode(body), content_type="application/json",
                        headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(kind: str, id_: str) -> ApiError:
    # One answer for an id of another project, a deleted one and one that never existed.
    return ApiError(404, f"No {kind} with id '{id_}' found.", param="id" if kind == "batch" else "file_id",
                    code=None)
