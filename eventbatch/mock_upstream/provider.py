"""The provider's routes under /v1: each POST is counted in the ledger, turned away with a 429
while the provider is rate limited or full, checked against the faults, then answered from
`answers`."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any, Callable

import msgspec
from aiohttp import web

from . import answers
from .envelopes import decode, encode, error_response, forced, invalid, json_response, rate_limited
from .faults import BadControl, plan_for
from .ledger import CLIENT_GONE, MockLedger
from .state import LEDGER, PROVIDER, SETTINGS, STOPPING

_HANG_POLL_SECONDS = 0.05


def endpoint(answer: answers.Answer | None) -> Callable[[web.Request], Any]:
    """A POST route with bookkeeping; `answer=None` is an unknown /v1 path (404, still counted)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        ledger = app[LEDGER]
        provider = app[PROVIDER]
        started_at = time.time()
        ledger.request_started(started_at, request.headers.get("Authorization"))
        # Decided on arrival, before any await, so `max_in_flight` counts exactly.
        admitted = provider.admit(app[SETTINGS])
        status = CLIENT_GONE
        digest = b""
        retry_after_ms = None
        try:
            raw = await request.read()
            digest = hashlib.blake2b(raw, digest_size=16).digest()
            if not admitted:
                response = rate_limited(app[SETTINGS].retry_after_ms)
            elif answer is None:
                response = error_response(404, f"Invalid URL (POST {request.path})", "invalid_request_error")
            else:
                response = await _respond(request, ledger, raw, digest, answer)
            transport = request.transport
            # An outage may have cut the connection while this request waited: nobody gets the answer.
            status = response.status if transport is not None and not transport.is_closing() else CLIENT_GONE
            if status == 429:
                sent = response.headers.get("retry-after-ms")
                retry_after_ms = None if sent is None else int(sent)
            return response
        finally:
            if admitted:
                provider.serving -= 1
            ledger.request_finished(started_at, request.path, status, digest, retry_after_ms)

    return handle


async def _respond(request: web.Request, ledger: MockLedger, raw: bytes, digest: bytes,
                   answer: answers.Answer) -> web.Response:
    settings = request.app[SETTINGS]
    if settings.api_key is not None and request.headers.get("Authorization") != "Bearer " + settings.api_key:
        return error_response(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
    try:
        body = decode(raw)
    except msgspec.DecodeError:
        return invalid("We could not parse the JSON body of your request. (HINT: This likely means you "
                       "aren't using your HTTP library correctly.)")
    if not isinstance(body, dict):
        return invalid("The request body must be a JSON object.")
    try:
        plan = plan_for(body, digest, settings, ledger)
    except BadControl as exc:
        return invalid(str(exc))
    if plan.hang:
        return await _hang(request)
    if plan.latency_ms > 0:
        await asyncio.sleep(plan.latency_ms / 1000)
    if plan.status is not None:
        return forced(plan.status, plan.retry_after_ms)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return invalid("You must provide a model parameter.")
    try:
        payload = answer(body, model)
    except answers.SHAPE_ERRORS as exc:
        return invalid(f"The request body has an unexpected shape: {exc}")
    if plan.echo_key:
        return _echoing_key(payload, request.headers.get("Authorization"))
    return json_response(200, payload)


def _escaped(text: str, every: int, hex_format: str = "04x") -> bytes:
    """`text` as a JSON string with every `every`-th character written as a \\u escape (a valid
    JSON spelling of the same string that a byte-for-byte search does not find)."""
    return b'"' + "".join(f"\\u{ord(c):{hex_format}}" if i % every == 0 else c for i, c in enumerate(text)).encode() + b'"'


def _echoing_key(payload: dict, authorization: str | None) -> web.Response:
    """The answer with the caller's key in `x-request-id` and twice in the body, JSON-escaped:
    once with only its first character escaped, once with every character."""
    key = (authorization or "").removeprefix("Bearer ")
    raw = encode({**payload, "echo_first": "@1", "echo_all": "@2"})
    raw = raw.replace(b'"@1"', _escaped(key, len(key) + 1)).replace(b'"@2"', _escaped(key, 1, "04X"))
    response = json_response(200, None, {"x-request-id": "req_" + key})
    response.body = raw
    return response


async def _hang(request: web.Request) -> web.Response:
    """Hold the request until the client disconnects or the server stops."""
    stopping = request.app[STOPPING]
    while not stopping.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            # Nobody is left to read this; the status only marks the request log.
            return error_response(CLIENT_GONE, "Client closed the request.", "invalid_request_error")
        await asyncio.sleep(_HANG_POLL_SECONDS)
    return error_response(503, "Mock upstream is shutting down.", "server_error")


async def _models(request: web.Request) -> web.Response:
    return json_response(200, answers.model_list())


async def _model(request: web.Request) -> web.Response:
    return json_response(200, answers.model(request.match_info["model"]))


_counted_not_found = endpoint(None)


async def _not_found(request: web.Request) -> web.StreamResponse:
    if request.method == "POST":
        return await _counted_not_found(request)
    return error_response(404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error")


def add_provider_routes(app: web.Application) -> None:
    for path, answer in answers.ANSWERS.items():
        app.router.add_post(path, endpoint(answer))
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{model}", _model)
    app.router.add_route("*", "/v1/{tail:.*}", _not_found)
