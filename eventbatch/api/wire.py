"""The wire objects, in the field order and shapes of OpenAI's Batch and Files API."""

from __future__ import annotations

import msgspec

from ..batch import BatchState, RequestCounts
from ..projections import FileView


class FileObject(msgspec.Struct):
    id: str
    object: str
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: str
    status_details: str | None


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int


class BatchUsage(msgspec.Struct):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class BatchObject(msgspec.Struct):
    id: str
    object: str
    endpoint: str
    model: str | None
    errors: dict | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None
    retry_of: str | None          # extension (SPEC §12.2): the batch this one retries; null otherwise


class ListObject(msgspec.Struct):
    object: str
    data: list
    first_id: str | None
    last_id: str | None
    has_more: bool


class Deleted(msgspec.Struct):
    id: str
    object: str
    deleted: bool


def file_object(f: FileView) -> FileObject:
    return FileObject(id=f.id, object="file", bytes=f.bytes, created_at=f.created_at, expires_at=f.expires_at,
                      filename=f.filename, purpose=f.purpose, status=f.status, status_details=None)


def batch_object(s: BatchState) -> BatchObject:
    u = s.usage
    return BatchObject(
        id=s.id, object="batch", endpoint=s.endpoint, model=s.model, errors=s.errors,
        input_file_id=s.input_file_id, completion_window=s.completion_window, status=s.status,
        output_file_id=s.output_file_id, error_file_id=s.error_file_id, created_at=s.created_at,
        in_progress_at=s.in_progress_at, expires_at=s.expires_at, finalizing_at=s.finalizing_at,
        completed_at=s.completed_at, failed_at=s.failed_at, expired_at=s.expired_at,
        cancelling_at=s.cancelling_at, cancelled_at=s.cancelled_at, request_counts=s.request_counts,
        usage=BatchUsage(u.input_tokens, InputTokensDetails(u.cached_tokens), u.output_tokens,
                         OutputTokensDetails(u.reasoning_tokens), u.total_tokens),
        metadata=s.metadata, retry_of=s.retry_of)


def list_object(items: list, has_more: bool) -> ListObject:
    return ListObject(object="list", data=items, first_id=items[0].id if items else None,
                      last_id=items[-1].id if items else None, has_more=has_more)


_enc = msgspec.json.Encoder()


def encode(obj) -> bytes:
    return _enc.encode(obj)
