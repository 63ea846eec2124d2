"""One request upstream, with retries: exponential backoff with full jitter on 429, 5xx,
timeouts and connection errors, Retry-After honoured, other 4xx final. Every attempt is kept."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import random
import re
import time

import aiohttp
import msgspec

from .. import events as ev
from .providers import Provider

BACKOFF_BASE = 0.1      # seconds before the 2nd attempt, doubling after
BACKOFF_CAP = 20.0
RETRY_AFTER_CAP = 60.0
MAX_RESPONSE_BYTES = 64 * 1024 * 1024   # an answer larger than this is not kept (it would bloat the log)


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


def backoff(attempt: int) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * (2 ** (attempt - 1))))


class ResponseTooLarge(Exception):
    pass


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


async def call(session: aiohttp.ClientSession, provider: Provider, semaphore: asyncio.Semaphore, url: str,
               body: bytes, *, max_attempts: int, timeout: float, may_start=lambda: True,
               on_attempt=None, attempts: list[ev.Attempt] | None = None) -> Outcome | None:
    """Send one request, retrying what is worth retrying. Returns None when `may_start()` said no
    before an attempt (the batch is being cancelled or expired): the request did not finish.
    `attempts` (the caller's list) holds every attempt made, also when the call is cancelled;
    an attempt cut short by cancellation is kept with error 'aborted'."""
    headers = {"Content-Type": "application/json"}
    if provider.api_key:
        headers["Authorization"] = f"Bearer {provider.api_key}"
    attempts = [] if attempts is None else attempts
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    while True:
        async with semaphore:
            if not may_start():
                return None
            started = time.time()
            t0 = time.perf_counter()
            status = None
            error = None
            wait = None
            data = b""
            request_id = None
            too_large = False
            try:
                async with session.post(url, data=body, headers=headers, timeout=client_timeout) as r:
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
                status, too_large = 502, True
            except asyncio.TimeoutError:
                error = "request_timeout"
            except asyncio.CancelledError:
                attempts.append(ev.Attempt(at=started, duration_ms=int((time.perf_counter() - t0) * 1000),
                                           error="aborted"))
                raise
            except (aiohttp.ClientError, OSError) as exc:
                error = "upstream_unreachable"
                data = type(exc).__name__.encode()
            duration = int((time.perf_counter() - t0) * 1000)
        attempts.append(ev.Attempt(at=started, duration_ms=duration, status_code=status,
                                   error=None if error is None else (error if error == "request_timeout"
                                                                     else f"{error}: {data.decode()}")))
        if on_attempt is not None:
            on_attempt(status, duration)
        if too_large:  # final: asking again would bring the same answer
            return Outcome(attempts=attempts, status_code=502, body=msgspec.json.encode({"error": {
                "message": f"The upstream answer was larger than {MAX_RESPONSE_BYTES} bytes and was not kept.",
                "type": "upstream_response_too_large", "param": None, "code": None}}))
        if status is not None and status != 429 and status < 500:
            data = _scrub(data, provider.api_key)
            usage = usage_of(data) if 200 <= status < 300 else None
            if 200 <= status < 300 and usage is None:
                # A 2xx whose body is not JSON: keep it, as a JSON string, so the line stays valid.
                data, usage = msgspec.json.encode(data.decode("utf-8", "replace")), ev.Usage()
            elif not 200 <= status < 300 and usage_of(data) is None:
                data = msgspec.json.encode({"error": {"message": data.decode("utf-8", "replace")[:2000]}})
            return Outcome(attempts=attempts, status_code=status, body=data, request_id=request_id, usage=usage)
        if len(attempts) >= max_attempts:
            if status is not None:
                data = _scrub(data, provider.api_key)
                if usage_of(data) is None:
                    data = msgspec.json.encode({"error": {"message": data.decode("utf-8", "replace")[:2000]}})
                return Outcome(attempts=attempts, status_code=status, body=data, request_id=request_id)
            message = (f"No answer within {timeout:g}s after {len(attempts)} attempt(s)." if error == "request_timeout"
                       else f"Could not reach the upstream provider '{provider.name}' after {len(attempts)} "
                            "attempt(s).")
            return Outcome(attempts=attempts, error_code=error, error_message=message)
        await asyncio.sleep(wait if wait is not None else backoff(len(attempts)))
