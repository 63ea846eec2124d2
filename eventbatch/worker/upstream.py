"""One attempt of one request upstream, and what it came to: the answer, how to treat it
(success, final, rate limited, transient failure), and the outcome event's shape once a request
is done. Retries, waits and limits are the scheduler's (scheduler.py); this module only talks
HTTP and keeps the provider's key out of everything it hands back."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import re
import time

import aiohttp
import msgspec
import structlog

from .. import events as ev
from .providers import Provider

log = structlog.get_logger("eventbatch.worker")

RETRY_AFTER_CAP = 60.0
MAX_RESPONSE_BYTES = 64 * 1024 * 1024   # an answer larger than this is not kept (it would bloat the log)
PROBE_TIMEOUT = 10.0

# How an attempt is treated (Answer.kind).
OK = "ok"                      # 2xx: the outcome
FINAL = "final"                # 4xx other than 429, or an answer too large: the outcome, asking again won't help
RATE_LIMITED = "rate_limited"  # 429: the provider asks us to slow down; spends no attempt
TRANSIENT = "transient"        # 5xx, timeout, connection error: worth another attempt later
INTERNAL = "internal"          # the attempt could not even be made (a defect here): counted, logged


class _Details(msgspec.Struct):
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None
    input_tokens_details: _Details | None = None
    output_tokens_details: _Details | None = None


class _Envelope(msgspec.Struct):
    usage: _Usage | None = None


_envelope = msgspec.json.Decoder(_Envelope)


def usage_of(body: bytes) -> ev.Usage | None:
    """The usage block of a JSON response (chat/completions or responses naming), or None when
    the body is not JSON at all."""
    try:
        u = _envelope.decode(body).usage
    except msgspec.ValidationError:
        # An unexpected shape: count nothing, if it is JSON at all (the typed decoder may stop
        # before it has read the whole body).
        try:
            msgspec.json.decode(body)
        except (msgspec.DecodeError, RecursionError):
            return None
        u = None
    except (msgspec.DecodeError, RecursionError):  # not JSON, or nested too deep to read
        return None
    if u is None:
        return ev.Usage()
    cached = (u.prompt_tokens_details or u.input_tokens_details or _Details()).cached_tokens
    reasoning = (u.completion_tokens_details or u.output_tokens_details or _Details()).reasoning_tokens
    inp = u.prompt_tokens or u.input_tokens
    out = u.completion_tokens or u.output_tokens
    return ev.Usage(input_tokens=inp, cached_tokens=cached, output_tokens=out, reasoning_tokens=reasoning,
                    total_tokens=u.total_tokens or inp + out)


def retry_after(headers) -> float | None:
    """Seconds the provider asks us to wait: retry-after-ms (OpenAI's), else Retry-After in
    seconds or as an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return min(max(float(ms) / 1000.0, 0.0), RETRY_AFTER_CAP)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra:
        try:
            return min(max(float(ra), 0.0), RETRY_AFTER_CAP)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(ra).timestamp()
                return min(max(when - time.time(), 0.0), RETRY_AFTER_CAP)
            except (TypeError, ValueError):
                pass
    return None


class ResponseTooLarge(Exception):
    pass


class Answer(msgspec.Struct):
    """What one attempt brought back, scrubbed of the provider's key."""
    kind: str
    attempt: ev.Attempt
    status_code: int | None = None
    body: bytes = b""
    request_id: str | None = None
    retry_after: float | None = None     # seconds the provider asked us to wait (429, 5xx)
    error: str | None = None             # request_timeout, upstream_unreachable, internal_error


class Outcome(msgspec.Struct):
    """What came of a request after its last attempt."""
    attempts: list[ev.Attempt]
    status_code: int | None = None
    body: bytes | None = None
    request_id: str | None = None
    usage: ev.Usage | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _headers(provider: Provider) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if provider.api_key:
        headers["Authorization"] = f"Bearer {provider.api_key}"
    return headers


async def send(session: aiohttp.ClientSession, provider: Provider, url: str, body: bytes, *, timeout: float,
               attempts: list[ev.Attempt]) -> Answer:
    """One attempt. Its Attempt is appended to `attempts` (the request's list), also when the call
    is cancelled: an attempt cut short is kept with error 'aborted'."""
    started = time.time()
    t0 = time.perf_counter()
    status = error = request_id = wait = None
    data = b""
    try:
        async with session.post(url, data=body, headers=_headers(provider),
                                timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            if (r.content_length or 0) > MAX_RESPONSE_BYTES:
                raise ResponseTooLarge()
            data = await r.content.read(MAX_RESPONSE_BYTES + 1)
            if len(data) > MAX_RESPONSE_BYTES or not r.content.at_eof():
                raise ResponseTooLarge()
            status = r.status
            request_id = _scrub_text(r.headers.get("x-request-id"), provider.api_key)
            if status == 429 or status >= 500:
                wait = retry_after(r.headers)
    except ResponseTooLarge:
        attempt = ev.Attempt(at=started, duration_ms=_ms(t0), status_code=502)
        attempts.append(attempt)
        return Answer(FINAL, attempt, 502, msgspec.json.encode({"error": {
            "message": f"The upstream answer was larger than {MAX_RESPONSE_BYTES} bytes and was not kept.",
            "type": "upstream_response_too_large", "param": None, "code": None}}))
    except asyncio.TimeoutError:
        error = "request_timeout"
    except asyncio.CancelledError:
        attempts.append(ev.Attempt(at=started, duration_ms=_ms(t0), error="aborted"))
        raise
    except (aiohttp.ClientError, OSError) as exc:
        error, data = "upstream_unreachable", type(exc).__name__.encode()
    except Exception as exc:   # e.g. a ValueError from the HTTP client: a defect, not the provider's doing
        log.exception("upstream_attempt_failed", provider=provider.name)
        error, data = "internal_error", type(exc).__name__.encode()
    attempt = ev.Attempt(at=started, duration_ms=_ms(t0), status_code=status,
                         error=None if error is None else error if error == "request_timeout"
                         else f"{error}: {data.decode()}")
    attempts.append(attempt)
    if error is not None:
        return Answer(INTERNAL if error == "internal_error" else TRANSIENT, attempt, error=error)
    data = _scrub(data, provider.api_key)
    kind = OK if 200 <= status < 300 else RATE_LIMITED if status == 429 else TRANSIENT if status >= 500 else FINAL
    return Answer(kind, attempt, status, data, request_id, wait)


def _ms(t0: float) -> int:
    return int((time.perf_counter() - t0) * 1000)


async def probe(session: aiohttp.ClientSession, provider: Provider) -> bool:
    """Does the provider answer at all? GET {base_url}/models: any HTTP answer below 500 (a 404
    from a provider without that route is an answer too). Costs no tokens."""
    try:
        async with session.get(provider.base_url + "/models", headers=_headers(provider),
                               timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as r:
            await r.content.read(65536)
            return r.status < 500
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError, ValueError):
        return False


def outcome(answer: Answer, attempts: list[ev.Attempt], provider: Provider, timeout: float) -> Outcome:
    """The request's outcome from its last answer: its status and body when the provider
    answered (a body that is not JSON kept as a JSON string, so the line stays valid), else the
    error of the last attempt in words."""
    if answer.status_code is None:
        counted = len(attempts)
        if answer.error == "request_timeout":
            message = f"No answer within {timeout:g}s, {counted} attempt(s)."
        elif answer.error == "internal_error":
            message = (f"The request could not be sent to the upstream provider '{provider.name}' "
                       f"({answer.attempt.error}); see the worker's log.")
        else:
            message = f"Could not reach the upstream provider '{provider.name}' after {counted} attempt(s)."
        return Outcome(attempts=attempts, error_code=answer.error, error_message=message)
    data, status = answer.body, answer.status_code
    usage = usage_of(data) if 200 <= status < 300 else None
    if 200 <= status < 300 and usage is None:
        data, usage = msgspec.json.encode(data.decode("utf-8", "replace")), ev.Usage()
    elif not 200 <= status < 300 and usage_of(data) is None:
        data = msgspec.json.encode({"error": {"message": data.decode("utf-8", "replace")[:2000]}})
    return Outcome(attempts=attempts, status_code=status, body=data, request_id=answer.request_id, usage=usage)


REDACTED = b"[redacted]"


@functools.lru_cache(maxsize=64)
def _key_pattern(key: str) -> re.Pattern[bytes]:
    """The key as JSON may spell it: each character as itself or as a \\u escape (hex in either
    case), '/' also as '\\/'. A provider that echoes the key may escape any of its characters."""
    parts = []
    for ch in key:
        spellings = [re.escape(ch.encode())]
        if ord(ch) < 0x10000:
            hex_digits = b"".join(b"[%s%s]" % (d.lower().encode(), d.upper().encode()) if d.isalpha() else d.encode()
                                  for d in f"{ord(ch):04x}")
            spellings.append(rb"\\u" + hex_digits)
        if ch == "/":
            spellings.append(rb"\\/")
        parts.append(b"(?:" + b"|".join(spellings) + b")")
    return re.compile(b"".join(parts))


def _scrub(body: bytes, key: str | None) -> bytes:
    """The bytes with every spelling of the key replaced: an upstream answer may echo the key it
    was sent, and it must never reach a file or an event."""
    if not key:
        return body
    raw = key.encode()
    if raw not in body and b"\\" not in body:   # the common case: no key and no escapes at all
        return body
    return _key_pattern(key).sub(REDACTED, body)


def _scrub_text(text: str | None, key: str | None) -> str | None:
    """A header value kept from the answer (x-request-id), scrubbed the same way."""
    if text is None or not key:
        return text
    return _scrub(text.encode("utf-8", "surrogateescape"), key).decode("utf-8", "replace")
