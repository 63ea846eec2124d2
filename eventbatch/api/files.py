"""/v1/files"""

from __future__ import annotations

import time

from aiohttp import BodyPartReader, web
from aiohttp.helpers import content_disposition_header

from .. import blobs, files as file_commands, projections
from ..store import NotFound
from ..validation import MAX_FILE_BYTES
from . import wire
from .idempotency import multipart
from .state import POOL, PROJECT, UPLOAD_SLOTS, connection
from .errors import ApiError, bad_request, invalid_value, not_found
from .paging import parse_limit, parse_choice

MULTIPART_SLACK = 64 * 1024  # room for the multipart envelope around a file at the size limit


def _too_large() -> ApiError:
    return ApiError(413, f"The file is larger than the {MAX_FILE_BYTES // 1_000_000} MB limit. "
                         "Split it into several files, one batch each.", param="file")


async def create_file(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_FILE_BYTES + MULTIPART_SLACK:
        raise _too_large()
    if not request.content_type.startswith("multipart/"):
        raise bad_request("Upload a file as multipart/form-data with fields 'file' and 'purpose'.", param="file")
    reader = await multipart(request)   # hashes the parts when the request has an Idempotency-Key
    fields: dict[str, str] = {}
    project = request[PROJECT]
    async with request.app[UPLOAD_SLOTS], connection(request) as conn, conn.transaction():
        stored = None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise bad_request("Nested multipart bodies are not supported.", param="file")
            if part.name == "file":
                if stored is not None:
                    raise bad_request("Send exactly one 'file' field.", param="file")
                filename = part.filename or "upload.jsonl"

                async def chunks(part=part):
                    while chunk := await part.read_chunk(256 * 1024):
                        yield chunk
                try:
                    stored = await file_commands.store_upload(conn, chunks())
                except blobs.TooLarge:
                    raise _too_large() from None
            elif part.name:
                value = bytearray()
                while chunk := await part.read_chunk(1024):
                    value += chunk
                    if len(value) > 1024:
                        raise bad_request(f"Field '{part.name}' is too long.", param=part.name)
                fields[part.name] = value.decode("utf-8", "replace")
        if stored is None:
            raise bad_request("Missing required parameter: 'file'.", param="file")
        purpose = fields.get("purpose")
        if purpose is None:
            raise bad_request("Missing required parameter: 'purpose'.", param="purpose")
        if purpose != "batch":      # the only purpose of an upload here (batch_output is ours)
            raise invalid_value("purpose", purpose, ("batch",))
        view = await file_commands.record_upload(conn, file_id=stored[0], project=project, filename=filename,
                                            purpose=purpose, size=stored[1], expires_after=_expires_after(fields))
    return web.Response(body=wire.encode(wire.file_object(view)), content_type="application/json")


def _expires_after(fields: dict[str, str]) -> int | None:
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request("expires_after[anchor] must be 'created_at'.", param="expires_after.anchor")
    try:
        value = int(seconds or "")
    except ValueError:
        raise bad_request("expires_after[seconds] must be a whole number of seconds.",
                          param="expires_after.seconds") from None
    if not 3600 <= value <= 2_592_000:
        raise bad_request("expires_after[seconds] must be between 3600 (1 hour) and 2592000 (30 days).",
                          param="expires_after.seconds")
    return value


async def list_files(request: web.Request) -> web.Response:
    project = request[PROJECT]
    q = request.query
    limit = parse_limit(q, default=10_000, high=10_000)
    order = parse_choice(q, "order", ("asc", "desc"), "desc")
    purpose = q.get("purpose")
    async with request.app[POOL].acquire() as conn:
        page = await projections.file_page(conn, project, after=q.get("after"), purpose=purpose,
                                           ascending=order == "asc", limit=limit + 1)
    if page is None:
        raise bad_request(f"No file with id '{q['after']}' to list after.", param="after")
    now = time.time()
    items = [wire.file_object(v) for v in page[:limit] if not v.expired(now)]
    return web.Response(body=wire.encode(wire.list_object(items, len(page) > limit)), content_type="application/json")


async def _own_file(request: web.Request, conn):
    file_id = request.match_info["file_id"]
    view = await projections.get_file(conn, file_id, request[PROJECT])
    if view is None:
        raise not_found("file", file_id)
    return view


async def retrieve_file(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        view = await _own_file(request, conn)
    return web.Response(body=wire.encode(wire.file_object(view)), content_type="application/json")


async def delete_file(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    async with request.app[POOL].acquire() as conn:
        try:
            await file_commands.delete_file(conn, request[PROJECT], file_id)
        except NotFound:
            raise not_found("file", file_id) from None
    return web.Response(body=wire.encode(wire.Deleted(id=file_id, object="file", deleted=True)),
                        content_type="application/json")


async def file_content(request: web.Request) -> web.StreamResponse:
    pool = request.app[POOL]
    async with pool.acquire() as conn:
        view = await _own_file(request, conn)
    response = web.StreamResponse(headers={
        "Content-Type": "application/jsonl" if view.filename.endswith(".jsonl") else "application/octet-stream",
        # The helper percent-escapes the name: a quote cannot add a parameter, a CR or LF cannot
        # end the header (which made every download of such a file a 500).
        "Content-Disposition": content_disposition_header("attachment", filename=view.filename),
        # The bytes are the user's own: a browser must not guess them into HTML or script.
        "X-Content-Type-Options": "nosniff"})
    response.content_length = view.bytes
    await response.prepare(request)
    # The pool, not one connection: each query borrows a connection for a few pieces, so a slow
    # reader holds none while it reads (file bytes never change once written).
    async for piece in blobs.iter_pieces(pool, view.id):
        await response.write(piece)
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/files", create_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", retrieve_file)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
