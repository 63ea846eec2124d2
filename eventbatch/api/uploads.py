"""POST /v1/files: a multipart upload, read part by part.

What can go wrong on the wire is mapped here, before anything reaches the database: malformed
part headers (control or undecodable bytes, lines over the reader's 8,190 bytes) are a 400, a
filename Postgres cannot store is a 400, a client that leaves mid-upload is one quiet log line
(ClientGone), not an error with a traceback."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import asyncpg
import msgspec
import structlog
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError

from .. import blobs, files as file_commands
from ..validation import MAX_FILE_BYTES
from . import params, wire
from .errors import ApiError, ClientGone, bad_request, invalid_value, parse_error_reason
from .idempotency import multipart
from .state import POOL, PROJECT, SETTINGS, UPLOAD_SLOTS, connection

log = structlog.get_logger("eventbatch.api")

MULTIPART_SLACK = 64 * 1024  # room for the multipart envelope around a file at the size limit
FIELD_LIMIT = 1024           # bytes of a non-file field (purpose, expires_after…)
READ_SIZE = 256 * 1024


def too_large() -> ApiError:
    return ApiError(413, f"The file is larger than the {MAX_FILE_BYTES // 1_000_000} MB limit. "
                         "Split it into several files, one batch each.", param="file")


class PartReader:
    """The parts of one multipart body, with the wire's failures turned into API errors.

    Every piece of the body (1 MiB, counted over all parts) must arrive within `timeout`
    seconds of the one before (of the start, for the first): a client that sends slower is cut
    off with 408 instead of keeping its upload open for as long as it likes."""

    def __init__(self, reader: MultipartReader, timeout: float, boundary: str = ""):
        self.reader, self.timeout, self.boundary = reader, timeout, boundary
        self.received = 0   # bytes of part content read so far, for the log of an abandoned upload
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + timeout

    async def _guard(self, coro):
        try:
            async with asyncio.timeout_at(self._deadline):
                return await coro
        except TimeoutError:
            raise ApiError(408, f"The upload stalled: less than 1 MiB arrived in {self.timeout:g} seconds. "
                                "Upload again over a faster connection.", param="file",
                           close_connection=True) from None
        except HttpProcessingError as exc:
            raise bad_request(f"A part of the multipart body is malformed: {parse_error_reason(exc)}.",
                              param="file") from None
        except ConnectionResetError:
            raise ClientGone("upload_abandoned", bytes_received=self.received) from None
        except ValueError as exc:
            # aiohttp's multipart reader says a body is badly framed with a ValueError.
            raise self._framing_error(str(exc)) from None

    def _framing_error(self, what: str) -> ApiError:
        b = self.boundary
        if "starting boundary" in what:
            message = (f"The multipart body does not begin with its starting boundary '--{b}' (Content-Type says "
                       f"boundary={b}). Send a multipart/form-data body framed by that boundary.")
        elif "after EOF" in what or "did not read all" in what:
            message = (f"The multipart body ends before its closing boundary '--{b}--' (Content-Type says "
                       f"boundary={b}): it was cut short. Send the whole body, ending with '--{b}--'.")
        else:
            message = (f"The multipart body is not framed by its boundary '--{b}' (Content-Type says "
                       f"boundary={b}): a boundary line is malformed. Send a well-formed multipart/form-data body.")
        return bad_request(message, param="file")

    def _count(self, n: int) -> None:
        before = self.received // blobs.PIECE
        self.received += n
        if self.received // blobs.PIECE > before:
            self._deadline = self._loop.time() + self.timeout

    async def next(self) -> BodyPartReader | None:
        part = await self._guard(self.reader.next())
        if part is not None and not isinstance(part, BodyPartReader):
            raise bad_request("Nested multipart bodies are not supported.", param="file")
        return part

    async def chunks(self, part: BodyPartReader) -> AsyncIterator[bytes]:
        while chunk := await self._guard(part.read_chunk(READ_SIZE)):
            self._count(len(chunk))
            yield chunk

    async def field(self, part: BodyPartReader) -> bytes:
        value = bytearray()
        async for chunk in self.chunks(part):
            value += chunk
            if len(value) > FIELD_LIMIT:
                raise bad_request(f"Field '{part.name}' is too long.", param=part.name)
        return bytes(value)


class ExpiresAfter(msgspec.Struct, forbid_unknown_fields=True):
    anchor: str
    seconds: int


_expires_decoder = msgspec.json.Decoder(ExpiresAfter)


async def create_file(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_FILE_BYTES + MULTIPART_SLACK:
        raise too_large()
    if not request.content_type.startswith("multipart/"):
        raise bad_request("Upload a file as multipart/form-data with fields 'file' and 'purpose'.", param="file")
    try:
        body = await multipart(request)   # hashes the parts when there is an Idempotency-Key
    except (ValueError, KeyError):   # no boundary, or a bad one
        raise bad_request("The multipart body needs a boundary in its Content-Type header.", param="file") from None
    boundary = parse_mimetype(request.headers.get("Content-Type", "")).parameters.get("boundary", "")
    reader = PartReader(body, request.app[SETTINGS].upload_read_timeout_seconds, boundary)
    pool = request.app[POOL]
    stored: tuple[str, int] | None = None
    try:
        fields: dict[str, str] = {}
        expires_json: bytes | None = None
        filename = "upload.jsonl"
        unreadable: str | None = None
        while (part := await reader.next()) is not None:
            if part.name == "file":
                if stored is not None:
                    raise bad_request("Send exactly one 'file' field.", param="file")
                filename = params.text(part.filename or "upload.jsonl", "file", "The filename")
                try:
                    # Each piece its own short transaction, within the upload slots: no
                    # connection or transaction is held while the client sends.
                    stored = await file_commands.store_upload(pool, reader.chunks(part), request.app[UPLOAD_SLOTS])
                except blobs.TooLarge:
                    raise too_large() from None
            elif part.name == "expires_after":
                # Some clients send the object as one JSON part rather than as expires_after[…] fields.
                expires_json = await reader.field(part)
            elif part.name:
                fields[part.name] = (await reader.field(part)).decode("utf-8", "replace")
            elif not unreadable and part.headers.get("Content-Disposition"):
                # aiohttp could not parse its Content-Disposition (e.g. a ';' after an escaped
                # quote in the filename): said if the file is then missing, not "missing" alone.
                unreadable = part.headers["Content-Disposition"]
        if stored is None and unreadable:
            raise bad_request(f"A part's Content-Disposition header could not be read ({unreadable[:80]!r}), so "
                              "no 'file' field was found. Quote the filename without ';' or '\\\"' in it, or send "
                              "it as filename*=UTF-8''<percent-encoded name>.", param="file")
        if stored is None:
            raise bad_request("Missing required parameter: 'file'.", param="file")
        purpose = fields.get("purpose")
        if purpose is None:
            raise bad_request("Missing required parameter: 'purpose'.", param="purpose")
        if purpose != "batch":      # the only purpose of an upload here (batch_output is ours)
            raise invalid_value("purpose", purpose, ("batch",))
        seconds = expires_after(fields, expires_json)
        # The file exists from here on: its file_created event and view, in one short transaction.
        async with connection(request) as conn, conn.transaction():
            view = await file_commands.record_upload(conn, file_id=stored[0], project=request[PROJECT],
                                                     filename=filename, purpose=purpose, size=stored[1],
                                                     expires_after=seconds)
    except BaseException:
        if stored is not None:
            await file_commands.discard_upload(pool, stored[0])
        raise
    return web.Response(body=wire.encode(wire.file_object(view)), content_type="application/json")


def expires_after(fields: dict[str, str], as_json: bytes | None) -> int | None:
    """Seconds until the file expires, from expires_after[anchor]/[seconds] or one JSON part."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if as_json is not None:
        if anchor is not None or seconds is not None:
            raise bad_request("Send expires_after either as one JSON part or as expires_after[anchor] and "
                              "expires_after[seconds], not both.", param="expires_after")
        try:
            given = _expires_decoder.decode(as_json)
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise bad_request('expires_after must be a JSON object {"anchor": "created_at", "seconds": N}.',
                              param="expires_after") from None
        anchor, seconds = given.anchor, str(given.seconds)
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request("expires_after[anchor] must be 'created_at'.", param="expires_after.anchor")
    # ASCII digits only: int() also takes '+5', '1_0' and other scripts' digits
    if not (seconds and seconds.isascii() and seconds.isdigit() and len(seconds) <= 9):
        raise bad_request("expires_after[seconds] must be a whole number of seconds.",
                          param="expires_after.seconds")
    value = int(seconds)
    if not 3600 <= value <= 2_592_000:
        raise bad_request("expires_after[seconds] must be between 3600 (1 hour) and 2592000 (30 days).",
                          param="expires_after.seconds")
    return value


ORPHAN_SWEEP_SECONDS = 60.0


def orphan_idle_seconds(read_timeout: float) -> float:
    """How long the pieces of an upload that never became a file wait before they are dropped:
    far longer than a live upload can go without adding one (its read timeout)."""
    return max(600.0, 4 * read_timeout)


async def drop_orphan_pieces(app: web.Application) -> None:
    """The API's background sweep of upload pieces that never became a file (the client left,
    or a process died mid-upload); at start, then every minute. Any API process may run it: the
    delete is the same whoever does it."""
    idle = orphan_idle_seconds(app[SETTINGS].upload_read_timeout_seconds)
    while True:
        try:
            freed = await blobs.delete_orphans(app[POOL], idle)
            if freed:
                log.info("upload_orphans_dropped", files=len(freed))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("upload_orphans_sweep_failed", error=type(exc).__name__)
        await asyncio.sleep(ORPHAN_SWEEP_SECONDS)
