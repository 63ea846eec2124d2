"""Idempotency keys (SPEC §12.3): a POST under /v1 sent with `Idempotency-Key` is done once per
project and key for 24 hours; a repeat of the same request answers the first response again,
and the same key with another request is 409 `idempotency_key_reused`.

Generic over the POST routes (files, batches, cancel, retry, and any later one): the middleware
gives the handler a request-wide transaction (state.RequestTransaction) that first claims the
key (sql/idempotency.sql). The claim is a row under a primary key, inserted in the transaction
that creates the object, so

- the object and the record of its response commit together or not at all;
- a concurrent duplicate waits on the row for the first to finish, then reads its response:
  two creates with one key make exactly one batch;
- a request that fails (any 4xx or 5xx) rolls back, and the key stays free to retry with.

A JSON request (or one without a body) is known before it runs (its body is read first), so a
repeat of a recorded one is answered, and another request under its key refused, before the
handler runs.

The request is known by a SHA-256 of method, path and body. A JSON body is small (the app's
1 MiB cap) and read whole; an upload is hashed as it streams through the handler, part by part
(name, filename, bytes) and not over the raw multipart body, whose boundary differs at every
send of the same upload.
"""

from __future__ import annotations

import hashlib

import asyncpg
import msgspec
import structlog
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..idempotency import RETENTION_SECONDS
from ..sql import Q
from .errors import ApiError, bad_request
from .state import POOL, PROJECT, REQUEST_TRANSACTION, RequestTransaction

log = structlog.get_logger("eventbatch.api")

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


class RequestDigest:
    """The fingerprint of a request: method, path, then its body whole or its parts in order."""

    def __init__(self, method: str, path: str):
        self.method, self.path = method, path
        self.body: hashlib._Hash | None = None
        self.parts: list[tuple[str | None, str | None, hashlib._Hash]] = []
        self.reader: MultipartReader | None = None

    def part(self, name: str | None, filename: str | None) -> hashlib._Hash:
        sha = hashlib.sha256()
        self.parts.append((name, filename, sha))
        return sha

    async def finish(self, request: web.Request) -> bytes:
        """Read what the handler left unread and return the fingerprint. Never raises for what
        the client sent: it runs after the handler succeeded, and an error here would undo that
        work and answer a 500."""
        if self.reader is not None:      # an upload, read through multipart(): its parts
            try:
                await self.reader.release()
            except (ValueError, HttpProcessingError, web.RequestPayloadError):
                # What follows the parts the handler used does not parse: it counts as one more
                # part (the same bytes sent again give the same fingerprint, and aiohttp
                # ignores such a rest without a key too).
                self.parts.append(("", None, hashlib.sha256(b"unreadable rest")))
            body: object = [[name, filename, sha.hexdigest()] for name, filename, sha in self.parts]
        else:                            # anything else whole, whatever its Content-Type says
            try:
                body = hashlib.sha256(await request.read()).hexdigest()
            except (web.HTTPRequestEntityTooLarge, web.RequestPayloadError, HttpProcessingError):
                # over the 1 MiB a non-upload body may have, or undecodable: no route reads such a
                # body, so it stands for all of them alike
                body = "unreadable body"
        try:
            known = msgspec.json.encode([self.method, self.path, body])
        except UnicodeEncodeError:       # a part name or filename holding bytes that are not UTF-8
            known = repr([self.method, self.path, body]).encode()
        return hashlib.sha256(known).digest()


DIGEST = web.RequestKey("idempotency_digest", RequestDigest)


class _HashedPart(BodyPartReader):
    """A multipart part whose bytes feed the request's digest as they are read (release() reads
    what the handler skipped through read_chunk as well)."""

    sha: hashlib._Hash | None = None

    async def read_chunk(self, size: int = BodyPartReader.chunk_size) -> bytes:
        chunk = await super().read_chunk(size)
        if self.sha is not None:
            self.sha.update(chunk)
        return chunk


async def multipart(request: web.Request) -> MultipartReader:
    """`request.multipart()`, hashing every part it reads when the request has an idempotency
    key. Upload handlers use this instead of request.multipart()."""
    reader = await request.multipart()
    digest = request.get(DIGEST)
    if digest is None:
        return reader

    def part_reader(*args, **kwargs) -> _HashedPart:
        part = _HashedPart(*args, **kwargs)
        part.sha = digest.part(part.name, part.filename)
        return part

    reader.part_reader_cls = part_reader   # what MultipartReader builds each part with
    digest.reader = reader
    return reader


class _KeyTaken(Exception):
    """The key has a recorded first request: raised out of the handler before it does anything."""

    def __init__(self, first: asyncpg.Record | None):
        self.first = first


def _check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise bad_request(f"The {HEADER} header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters; "
                          "use a UUID, for example.", code="invalid_idempotency_key")


@web.middleware
async def idempotency_middleware(request: web.Request, handler):
    key = request.headers.get(HEADER)
    if key is None or request.method != "POST" or PROJECT not in request:
        return await handler(request)
    _check_key(key)
    project = request[PROJECT]
    digest = request[DIGEST] = RequestDigest(request.method, request.path_qs)
    if request.content_type == "application/json" or not request.body_exists:
        # A JSON request is known before it runs (its body is read already, under its deadline:
        # slow_clients): a repeat is answered, and another request under the key refused, before
        # the handler validates it (a reused key with a bad request is 409, not 400).
        first = await request.app[POOL].fetchrow(Q.idempotency_recorded, project, key)
        if first is not None:
            return await _replay(request, key, digest, first)

    async def claim(conn: asyncpg.Connection) -> None:
        await conn.execute(Q.idempotency_wait_briefly)
        try:
            first = await conn.fetchval(Q.idempotency_claim, project, key, RETENTION_SECONDS)
        except (asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError):
            raise ApiError(409, f"A request with this {HEADER} is still being processed. Retry when it has "
                                "finished: you will get its response.", code="idempotency_key_in_use") from None
        if not first:
            raise _KeyTaken(await conn.fetchrow(Q.idempotency_get, project, key))
        await conn.execute(Q.idempotency_wait_as_before)

    unit = request[REQUEST_TRANSACTION] = RequestTransaction(request.app[POOL], claim)
    try:
        response = await handler(request)
    except _KeyTaken as taken:
        await unit.close(request.app, commit=False)
        return await _replay(request, key, digest, taken.first)
    except BaseException:
        await unit.close(request.app, commit=False)
        raise
    if unit.conn is None or response.status >= 400:
        # Nothing written (refused before the handler reached the database) or a failure: the
        # key is not spent.
        if unit.conn is None and response.status < 400:
            # A handler that wrote through a connection of its own, not state.connection(request).
            log.warning("idempotency_key_not_applied", method=request.method, route=request.path)
        await unit.close(request.app, commit=response.status < 400)
        return response
    try:
        if isinstance(response, web.Response):
            await unit.conn.execute(Q.idempotency_record, project, key, await digest.finish(request),
                                    response.status, response.content_type, response.body)
        else:   # a streamed answer has no body to keep: the key is not held for it
            await unit.conn.execute(Q.idempotency_release, project, key)
    except BaseException:
        await unit.close(request.app, commit=False)
        raise
    await unit.close(request.app, commit=True)
    return response


async def _replay(request: web.Request, key: str, digest: RequestDigest, first) -> web.Response:
    mine = await digest.finish(request)
    if first is None or first["request_hash"] is None:
        raise ApiError(409, f"A request with this {HEADER} is still being processed. Retry when it has "
                            "finished: you will get its response.", code="idempotency_key_in_use")
    if bytes(first["request_hash"]) != mine:
        raise ApiError(409, f"This {HEADER} was already used with a different request in the last 24 hours. "
                            "Send a new key for a new request.", param=None, code="idempotency_key_reused")
    log.info("idempotent_replay", project=request[PROJECT], method=request.method, path=request.path)
    return web.Response(status=first["status"], body=first["body"], content_type=first["content_type"],
                        headers={"Idempotent-Replayed": "true"})
