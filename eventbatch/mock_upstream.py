"""A fake OpenAI-compatible provider: a real HTTP server for tests, demos and benchmarks.

Answers are deterministic functions of the request body, so tests can predict content and
usage. Faults come from the settings (random, seedable) or from a `"mock"` object in the
request body, which wins over the random faults:

    {"mock": {"status": 400}}               always answer 400 with an OpenAI error body
    {"mock": {"status": 503, "times": 2}}   503 for the first 2 sightings of this exact body, then normal
    {"mock": {"latency_ms": 500}}           extra delay for this request
    {"mock": {"hang": true}}                never answer; held until the client goes away
    {"mock": {"status": 429, "retry_after_ms": 1500}}   429 with a chosen retry delay

`GET /_mock/stats`, `GET /_mock/requests?since=T` and `POST /_mock/reset` let tests see what
the gateway did to it: how many requests, which statuses, peak concurrency, duplicates.

Benchmarks push thousands of requests a second through it, so per-request work is kept small:
msgspec for JSON, a 16-byte blake2b of the raw body, no logging.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import math
import random
import signal
import struct
import time
from http import HTTPStatus
from typing import Any, Callable

import msgspec
from aiohttp import web


class MockSettings(msgspec.Struct):
    latency_ms: float = 0.0
    fail_rate: float = 0.0  # fraction answered 500/502/503 with an OpenAI error body
    rate_limit_rate: float = 0.0  # fraction answered 429 with retry headers
    retry_after_ms: int = 20
    seed: int | None = None
    api_key: str | None = None  # when set, requests without `Authorization: Bearer <key>` get 401


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_REQUEST_LOG_LIMIT = 200_000
_RANDOM_FAILURES = (500, 502, 503)
_MAX_DIMENSIONS = 4096
_HANG_POLL_SECONDS = 0.05
# nginx's "client closed request": logged for requests whose client left before an answer.
_CLIENT_GONE = 499

# Separate from the seeded fault generator, so ids never shift the fault sequence.
_ids = random.Random()


def _hex(digits: int) -> str:
    return f"{_ids.getrandbits(digits * 4):0{digits}x}"


class MockLedger:
    """What the mock has seen since start or the last reset."""

    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self.reset()

    def reset(self) -> None:
        self.faults = random.Random(self._seed)
        self.requests = 0
        self.by_status: collections.Counter[int] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.successes = 0
        self.duplicate_successes = 0
        self.authorization_seen: set[str] = set()
        self.first_request_at: float | None = None
        self.last_request_started_at: float | None = None
        self.succeeded_bodies: set[bytes] = set()
        # Only bodies carrying `mock.times` are counted, so memory stays with the tests that ask.
        self.sightings: dict[bytes, int] = {}
        self.log: collections.deque[tuple[float, str, int, bytes]] = collections.deque(
            maxlen=_REQUEST_LOG_LIMIT)

    def request_started(self, started_at: float, authorization: str | None) -> None:
        self.requests += 1
        if self.first_request_at is None:
            self.first_request_at = started_at
        self.last_request_started_at = started_at
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        if authorization is not None:
            self.authorization_seen.add(authorization)

    def request_finished(self, started_at: float, path: str, status: int, digest: bytes) -> None:
        self.in_flight -= 1
        if status != _CLIENT_GONE:
            self.by_status[status] += 1
        if 200 <= status < 300:
            self.successes += 1
            if digest in self.succeeded_bodies:
                self.duplicate_successes += 1
            else:
                self.succeeded_bodies.add(digest)
        self.log.append((started_at, path, status, digest))

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": {str(s): n for s, n in sorted(self.by_status.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "successes": self.successes,
            "duplicate_successes": self.duplicate_successes,
            "authorization_seen": sorted(self.authorization_seen),
            "first_request_at": self.first_request_at,
            "last_request_started_at": self.last_request_started_at,
        }


SETTINGS = web.AppKey("mock_settings", MockSettings)
LEDGER = web.AppKey("mock_ledger", MockLedger)
STOPPING = web.AppKey("mock_stopping", asyncio.Event)


# --- answers -------------------------------------------------------------------------------

def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    all_headers = {"Content-Type": "application/json", "x-request-id": "req_" + _hex(32)}
    if headers:
        all_headers.update(headers)
    return web.Response(status=status, body=_encode(payload), headers=all_headers)


def _error(status: int, message: str, type_: str, code: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    return _json(status, {"error": {"message": message, "type": type_, "param": None, "code": code}},
                 headers)


def _invalid(message: str) -> web.Response:
    return _error(400, message, "invalid_request_error")


def _rate_limited(retry_after_ms: int) -> web.Response:
    return _error(
        429, "Rate limit reached (mock upstream). Please try again later.", "rate_limit_error",
        "rate_limit_exceeded",
        {"retry-after-ms": str(retry_after_ms), "Retry-After": str(max(1, math.ceil(retry_after_ms / 1000)))})


def _forced(status: int, retry_after_ms: int) -> web.Response:
    if status == 429:
        return _rate_limited(retry_after_ms)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    return _error(status, f"Mock upstream answered {status} {phrase}.", type_)


# --- deterministic content and usage ---------------------------------------------------------

def _chars(value: Any) -> int:
    """Characters of text in a prompt, message list or input items; a token id counts as 4."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    if isinstance(value, dict):
        content = value.get("content")
        if content is not None:
            return _chars(content)
        text = value.get("text")
        return len(text) if isinstance(text, str) else 0
    if isinstance(value, int):
        return 4
    return 0


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(v) for v in value)
    if isinstance(value, dict):
        content = value.get("content")
        if content is not None:
            return _text(content)
        text = value.get("text")
        return text if isinstance(text, str) else ""
    return ""


def _tokens(value: Any) -> int:
    return _chars(value) // 4 + 1


def _limit(body: dict, *names: str, default: int = 8) -> int:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return default


def _echo(value: Any) -> str:
    last = value[-1] if isinstance(value, list) and value else value
    return "echo: " + _text(last)[:32]


def _chat(body: dict, model: str) -> dict:
    messages = body.get("messages")
    prompt = _tokens(messages)
    completion = _limit(body, "max_completion_tokens", "max_tokens")
    return {
        "id": "chatcmpl-" + _hex(29),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": _echo(messages), "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }


def _completion(body: dict, model: str) -> dict:
    prompt_value = body.get("prompt")
    prompt = _tokens(prompt_value)
    completion = _limit(body, "max_tokens")
    return {
        "id": "cmpl-" + _hex(29),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"text": _echo(prompt_value), "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def _inputs(value: Any) -> list[Any]:
    """One input per string; a list of token ids is one input."""
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return value
    return [value]


def _vector(item: Any, dimensions: int) -> list[float]:
    seed = item.encode() if isinstance(item, str) else _encode(item)
    digest = hashlib.blake2b(seed, digest_size=64).digest()
    return [round(digest[i % 64] / 127.5 - 1.0, 6) for i in range(dimensions)]


def _embeddings(body: dict, model: str) -> dict:
    inputs = _inputs(body.get("input"))
    dimensions = min(_limit(body, "dimensions", default=8) or 8, _MAX_DIMENSIONS)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    prompt = 0
    for index, item in enumerate(inputs):
        vector: Any = _vector(item, dimensions)
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
        prompt += _tokens(item)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}


def _response(body: dict, model: str) -> dict:
    input_value = body.get("input")
    instructions = body.get("instructions")
    input_tokens = _tokens(input_value) + (_chars(instructions) // 4 if isinstance(instructions, str) else 0)
    output_tokens = _limit(body, "max_output_tokens")
    return {
        "id": "resp_" + _hex(48),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [{
            "type": "message",
            "id": "msg_" + _hex(48),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": _echo(input_value), "annotations": []}],
        }],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "temperature": 1.0,
        "top_p": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "metadata": {},
    }


_MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors",
    "violence", "violence/graphic",
)
_UNFLAGGED = {
    "flagged": False,
    "categories": {c: False for c in _MODERATION_CATEGORIES},
    "category_scores": {c: 0.0 for c in _MODERATION_CATEGORIES},
}


def _moderation(body: dict, model: str) -> dict:
    value = body.get("input")
    # A list of strings is several inputs; a list of text/image parts is one multimodal input.
    count = len(value) if isinstance(value, list) and value and all(isinstance(v, str) for v in value) else 1
    return {"id": "modr-" + _hex(29), "model": model, "results": [_UNFLAGGED] * count}


_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-small", "text-embedding-3-large",
           "omni-moderation-latest")


# --- handlers --------------------------------------------------------------------------------

Answer = Callable[[dict, str], dict]


def _endpoint(answer: Answer | None) -> Callable[[web.Request], Any]:
    """A POST route with bookkeeping; `answer=None` is an unknown /v1 path (404, still counted)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ledger = request.app[LEDGER]
        started_at = time.time()
        ledger.request_started(started_at, request.headers.get("Authorization"))
        status = _CLIENT_GONE
        digest = b""
        try:
            raw = await request.read()
            digest = hashlib.blake2b(raw, digest_size=16).digest()
            if answer is None:
                response = _error(404, f"Invalid URL (POST {request.path})", "invalid_request_error")
            else:
                response = await _respond(request, ledger, raw, digest, answer)
            status = response.status
            return response
        finally:
            ledger.request_finished(started_at, request.path, status, digest)

    return handle


async def _respond(request: web.Request, ledger: MockLedger, raw: bytes, digest: bytes,
                   answer: Answer) -> web.Response:
    settings = request.app[SETTINGS]
    if settings.api_key is not None and request.headers.get("Authorization") != "Bearer " + settings.api_key:
        return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
    try:
        body = _decode(raw)
    except msgspec.DecodeError:
        return _invalid("We could not parse the JSON body of your request. (HINT: This likely means you "
                        "aren't using your HTTP library correctly.)")
    if not isinstance(body, dict):
        return _invalid("The request body must be a JSON object.")

    forced: int | None = None
    latency_ms = settings.latency_ms
    retry_after_ms = settings.retry_after_ms
    control = body.get("mock")
    if control is not None:
        if not isinstance(control, dict):
            return _invalid("`mock` must be an object.")
        if control.get("hang"):
            return await _hang(request)
        status = control.get("status")
        if status is not None:
            if not isinstance(status, int) or not 400 <= status <= 599:
                return _invalid("`mock.status` must be an integer from 400 to 599.")
            times = control.get("times")
            if times is not None and (not isinstance(times, int) or isinstance(times, bool)):
                return _invalid("`mock.times` must be an integer.")
            if times is None:
                forced = status
            else:
                seen = ledger.sightings.get(digest, 0) + 1
                ledger.sightings[digest] = seen
                if seen <= times:
                    forced = status
        extra = control.get("latency_ms")
        if isinstance(extra, (int, float)):
            latency_ms += extra
        chosen_retry = control.get("retry_after_ms")
        if isinstance(chosen_retry, int):
            retry_after_ms = chosen_retry
    elif settings.rate_limit_rate > 0 or settings.fail_rate > 0:
        # One draw split into bands, so each rate is a fraction of all requests.
        draw = ledger.faults.random()
        if draw < settings.rate_limit_rate:
            forced = 429
        elif draw < settings.rate_limit_rate + settings.fail_rate:
            forced = ledger.faults.choice(_RANDOM_FAILURES)

    if latency_ms > 0:
        await asyncio.sleep(latency_ms / 1000)
    if forced is not None:
        return _forced(forced, retry_after_ms)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _invalid("You must provide a model parameter.")
    try:
        payload = answer(body, model)
    except (TypeError, ValueError, AttributeError, struct.error) as exc:
        return _invalid(f"The request body has an unexpected shape: {exc}")
    return _json(200, payload)


async def _hang(request: web.Request) -> web.Response:
    """Hold the request until the client disconnects or the server stops."""
    stopping = request.app[STOPPING]
    while not stopping.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            # Nobody is left to read this; the status only marks the request log.
            return _error(_CLIENT_GONE, "Client closed the request.", "invalid_request_error")
        await asyncio.sleep(_HANG_POLL_SECONDS)
    return _error(503, "Mock upstream is shutting down.", "server_error")


async def _models(request: web.Request) -> web.Response:
    return _json(200, {"object": "list",
                       "data": [{"id": m, "object": "model", "created": 1700000000, "owned_by": "mock"}
                                for m in _MODELS]})


async def _model(request: web.Request) -> web.Response:
    return _json(200, {"id": request.match_info["model"], "object": "model", "created": 1700000000,
                       "owned_by": "mock"})


_counted_not_found = _endpoint(None)


async def _not_found(request: web.Request) -> web.StreamResponse:
    if request.method == "POST":
        return await _counted_not_found(request)
    return _error(404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error")


async def _stats(request: web.Request) -> web.Response:
    return _json(200, request.app[LEDGER].stats())


async def _reset(request: web.Request) -> web.Response:
    request.app[LEDGER].reset()
    return _json(200, {"reset": True})


async def _requests(request: web.Request) -> web.Response:
    try:
        since = float(request.query.get("since", "0"))
    except ValueError:
        return _invalid("`since` must be a unix time in seconds.")
    rows = sorted(entry for entry in request.app[LEDGER].log if entry[0] >= since)
    return _json(200, {"data": [{"started_at": s, "path": p, "status": st, "body_sha": d.hex()}
                                for s, p, st, d in rows]})


async def _signal_stopping(app: web.Application) -> None:
    app[STOPPING].set()


def create_mock_app(settings: MockSettings) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[SETTINGS] = settings
    app[LEDGER] = MockLedger(settings.seed)
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_signal_stopping)
    app.router.add_post("/v1/chat/completions", _endpoint(_chat))
    app.router.add_post("/v1/completions", _endpoint(_completion))
    app.router.add_post("/v1/embeddings", _endpoint(_embeddings))
    app.router.add_post("/v1/responses", _endpoint(_response))
    app.router.add_post("/v1/moderations", _endpoint(_moderation))
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{model}", _model)
    app.router.add_route("*", "/v1/{tail:.*}", _not_found)
    app.router.add_get("/_mock/stats", _stats)
    app.router.add_post("/_mock/reset", _reset)
    app.router.add_get("/_mock/requests", _requests)
    return app


def _base_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


async def start_mock(settings: MockSettings, host: str = "127.0.0.1",
                     port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve on host:port (0 picks a free port); the caller ends it with `await runner.cleanup()`."""
    runner = web.AppRunner(create_mock_app(settings), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    return runner, _base_url(host, runner.addresses[0][1])


async def _serve_until_signalled(settings: MockSettings, host: str, port: int) -> None:
    runner, url = await start_mock(settings, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock-upstream listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_mock(settings: MockSettings, host: str, port: int) -> None:
    """Blocking, for the CLI: serve until SIGINT or SIGTERM."""
    asyncio.run(_serve_until_signalled(settings, host, port))
