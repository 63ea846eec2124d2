"""The HTTP answers every route shares: JSON with an `x-request-id`, and OpenAI's error envelope."""

from __future__ import annotations

import math
import random
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web

encode = msgspec.json.Encoder().encode
decode = msgspec.json.Decoder().decode

# Separate from the seeded fault generator, so ids never shift the fault sequence.
_ids = random.Random()


def hex_id(digits: int) -> str:
    return f"{_ids.getrandbits(digits * 4):0{digits}x}"


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    all_headers = {"Content-Type": "application/json", "x-request-id": "req_" + hex_id(32)}
    if headers:
        all_headers.update(headers)
    return web.Response(status=status, body=encode(payload), headers=all_headers)


def error_response(status: int, message: str, type_: str, code: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    return json_response(status, {"error": {"message": message, "type": type_, "param": None, "code": code}},
                         headers)


def invalid(message: str) -> web.Response:
    return error_response(400, message, "invalid_request_error")


def rate_limited(retry_after_ms: int | None) -> web.Response:
    """OpenAI's 429; `retry_after_ms=None` leaves out both retry headers."""
    headers = None
    if retry_after_ms is not None:
        # Whole seconds, as the header requires: never below the milliseconds, never 0 unless they are.
        seconds = max(1, math.ceil(retry_after_ms / 1000)) if retry_after_ms > 0 else 0
        headers = {"retry-after-ms": str(retry_after_ms), "Retry-After": str(seconds)}
    return error_response(
        429, "Rate limit reached (mock upstream). Please try again later.", "rate_limit_error",
        "rate_limit_exceeded", headers)


def forced(status: int, retry_after_ms: int | None) -> web.Response:
    """The answer for a status a fault chose: 429 with retry headers, others with their phrase."""
    if status == 429:
        return rate_limited(retry_after_ms)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    return error_response(status, f"Mock upstream answered {status} {phrase}.", type_)
