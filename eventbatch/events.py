"""The events: small immutable records, named in the past tense, with stable type tags.

A new field must have a default so that events already in the log still decode.
Timestamps are unix seconds as floats (the views round them down to whole seconds).
"""

from __future__ import annotations

import threading
from typing import Union

import msgspec
import zstandard


class Event(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True):
    pass


class LineError(msgspec.Struct, frozen=True):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class Usage(msgspec.Struct, frozen=True, omit_defaults=True):
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0


class Attempt(msgspec.Struct, frozen=True, omit_defaults=True):
    """One upstream attempt: when it started, how long it took, what came back."""
    at: float
    duration_ms: int
    status_code: int | None = None
    error: str | None = None          # timeout, connection error: a short description, never a key


class ChunkPlan(msgspec.Struct, frozen=True, array_like=True):
    first_index: int
    count: int
    byte_start: int
    byte_end: int


# --- files -------------------------------------------------------------------------------

class FileCreated(Event, tag="file_created"):
    file_id: str
    project: str
    filename: str
    purpose: str
    bytes: int
    at: float
    expires_at: int | None = None
    batch_id: str | None = None       # for output and error files: the batch they belong to
    # 'succeeded' (output file) or 'failed' (error file): the file's bytes are not stored but
    # derived from the batch's request outcomes, in input order (SPEC §12.5). None: stored bytes.
    results: str | None = None


class FileDeleted(Event, tag="file_deleted"):
    file_id: str
    at: float


class FileBytesPurged(Event, tag="file_bytes_purged"):
    """An input file past its expires_at had its stored bytes removed (the file was already
    hidden; this frees the space)."""
    file_id: str
    at: float


# --- batches -----------------------------------------------------------------------------

class BatchCreated(Event, tag="batch_created"):
    batch_id: str
    project: str
    input_file_id: str
    endpoint: str
    completion_window: str
    at: float
    expires_at: int
    metadata: dict[str, str] | None = None
    output_expires_after: int | None = None   # seconds after creation of the output files
    retry_of: str | None = None       # the batch whose failed requests this one retries (SPEC §12.2)


class BatchValidated(Event, tag="batch_validated"):
    total: int
    model: str | None
    chunks: list[ChunkPlan]
    at: float


class BatchValidationFailed(Event, tag="batch_validation_failed"):
    errors: list[LineError]
    error_count: int
    at: float


class BatchStarted(Event, tag="batch_started"):
    at: float


NULL = msgspec.Raw(b"null")


class RequestSucceeded(Event, tag="request_succeeded"):
    index: int
    custom_id: str
    status_code: int
    body: msgspec.Raw
    attempts: list[Attempt]
    request_id: str | None = None
    usage: Usage = Usage()


class RequestFailed(Event, tag="request_failed"):
    """A request that did not succeed: the upstream said no (status_code and body), or nothing
    usable came back (error_code: batch_expired, batch_cancelled, request_timeout,
    upstream_unreachable)."""
    index: int
    custom_id: str
    attempts: list[Attempt] = []
    status_code: int | None = None
    body: msgspec.Raw = NULL         # msgspec.Raw cannot sit in a union with None; JSON null stands for none
    request_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None


class BatchFinalizing(Event, tag="batch_finalizing"):
    at: float


class BatchOutputWritten(Event, tag="batch_output_written"):
    output_file_id: str | None
    error_file_id: str | None
    at: float


class BatchCompleted(Event, tag="batch_completed"):
    at: float


class BatchExpired(Event, tag="batch_expired"):
    at: float


class BatchCancelling(Event, tag="batch_cancelling"):
    at: float


class BatchCancelled(Event, tag="batch_cancelled"):
    at: float


# --- webhook deliveries (stream 'webhook-<delivery id>', SPEC §12.4) -------------------------

class WebhookDeliveryOwed(Event, tag="webhook_delivery_owed"):
    """A batch ended: its project's endpoint is owed one delivery (in the terminal transaction)."""
    delivery_id: str
    endpoint_id: str
    batch_id: str
    event_id: str
    event_type: str            # batch.completed, batch.failed, batch.cancelled, batch.expired
    url: str
    at: float


class WebhookAttempted(Event, tag="webhook_attempted"):
    """One POST of a delivery. next_attempt_at is None once it is delivered or given up."""
    delivery_id: str
    attempt: int
    at: float
    duration_ms: int
    status_code: int | None = None
    error: str | None = None   # timeout, connection refused: a short description
    delivered: bool = False
    next_attempt_at: float | None = None


class WebhookDeliveryDropped(Event, tag="webhook_delivery_dropped"):
    """No more attempts: its endpoint was removed."""
    delivery_id: str
    reason: str
    at: float


# --- API keys (stream 'key-<key id>', SPEC §8) ---------------------------------------------
# What an auditor needs: which key (its id and the last characters of the key, as OpenAI shows
# them), whose, since when and until when. Never the key, nor its hash: the hash that
# authenticates it is kept beside the log (table api_key_secrets), like file bytes.

class ApiKeyCreated(Event, tag="api_key_created"):
    key_id: str
    project: str
    at: float
    hint: str = ""              # the key's last four characters ("eb-…abcd"); empty for keys older than the log's


class ApiKeyRevoked(Event, tag="api_key_revoked"):
    key_id: str
    at: float


AnyEvent = Union[
    FileCreated, FileDeleted, FileBytesPurged,
    BatchCreated, BatchValidated, BatchValidationFailed, BatchStarted,
    RequestSucceeded, RequestFailed,
    BatchFinalizing, BatchOutputWritten, BatchCompleted, BatchExpired, BatchCancelling, BatchCancelled,
    WebhookDeliveryOwed, WebhookAttempted, WebhookDeliveryDropped,
    ApiKeyCreated, ApiKeyRevoked,
]
WEBHOOK_EVENTS = (WebhookDeliveryOwed, WebhookAttempted, WebhookDeliveryDropped)
REQUEST_OUTCOMES = (RequestSucceeded, RequestFailed)


class OutcomeSummary(msgspec.Struct, array_like=True):
    """A request outcome as the views' fold needs it (events.summary, migrations/060): the event
    without its response body and attempts, and the body's length. Folded from a summary, the
    outcome's body is a stand-in of that length: a view may depend on the body's length (the
    size of its result line, result_lines.output_line), never on its content. The test
    suite's last check (a fresh fold, from summaries, equal to the views, from whole events)
    holds every view to that."""
    body_bytes: int
    outcome: Union[RequestSucceeded, RequestFailed]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    """An event from its stored form (events.data: its JSON, or a zstd frame of it)."""
    return _decoder.decode(plain(data))


# --- the stored form (events.data, migrations/070) ----------------------------------------
# An event of COMPRESS_FROM bytes of JSON or more is stored as a zstd frame of that JSON. Why:
# Postgres's own compression of such a value (pglz, in TOAST) finds only repeats, so a base64
# answer (embeddings), 4 characters for 3 random bytes, does not shrink at all; zstd's entropy
# coding takes the 4/3 back, and prose shrinks to ~0.44 instead of pglz's ~0.6, at ~10-20 µs
# for 4 kB. Smaller events stay JSON: they sit in the heap row (Postgres toasts from ~2 kB),
# and the ~1 kB outcomes of a chat batch would pay the compression on the recorder's hot path
# for little. A frame starts with zstd's magic number, an event's JSON with '{': one look at
# the first byte tells the two apart, so the events stored before this stay as they are.
COMPRESS_FROM = 2000
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_codecs = threading.local()        # a zstd (de)compressor is not safe to share between threads


def _codec() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    try:
        return _codecs.pair
    except AttributeError:
        # Level 1: as small as level 3 on these bodies (measured), and the fastest.
        _codecs.pair = (zstandard.ZstdCompressor(level=1, write_checksum=False), zstandard.ZstdDecompressor())
        return _codecs.pair


def stored(json: bytes) -> bytes:
    """What events.data holds for an event's JSON: the JSON, or a zstd frame of it when that is
    large and the frame smaller."""
    if len(json) < COMPRESS_FROM:
        return json
    frame = _codec()[0].compress(json)
    return frame if len(frame) < len(json) else json


def plain(data: bytes) -> bytes:
    """An event's JSON from its stored form (the inverse of stored)."""
    if data[:4] == _ZSTD_MAGIC:
        return _codec()[1].decompress(data)
    return data


_summary_decoder = msgspec.json.Decoder(OutcomeSummary)


def summarize(outcome: RequestSucceeded | RequestFailed) -> bytes:
    return _encoder.encode(OutcomeSummary(len(outcome.body), msgspec.structs.replace(outcome, body=NULL, attempts=[])))


_STAND_IN = bytes(1 << 20)      # zeros, sliced (not copied) into stand-in bodies


def from_summary(data: bytes) -> RequestSucceeded | RequestFailed:
    s = _summary_decoder.decode(data)
    n = s.body_bytes
    body = memoryview(_STAND_IN)[:n] if n <= len(_STAND_IN) else bytes(n)
    return msgspec.structs.replace(s.outcome, body=msgspec.Raw(body))


def type_tag(event: Event) -> str:
    return type(event).__struct_config__.tag


def type_tag_of(cls: type[Event]) -> str:
    return cls.__struct_config__.tag
