"""/v1/files"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from .. import blobs, files as file_commands, projections, results
from ..store import NotFound
from . import params, uploads, wire
from .state import POOL, PROJECT
from .streaming import send_pages
from .errors import bad_request, not_found
from .paging import parse_limit, parse_choice


async def list_files(request: web.Request) -> web.Response:
    project = request[PROJECT]
    q = request.query
    limit = parse_limit(q, default=10_000, high=10_000)
    order = parse_choice(q, "order", ("asc", "desc"), "desc")
    purpose = params.query_text(q, "purpose")
    after = params.query_text(q, "after")
    async with request.app[POOL].acquire() as conn:
        page = await projections.file_page(conn, project, after=after, purpose=purpose,
                                           ascending=order == "asc", limit=limit + 1)
    if page is None:
        raise bad_request(f"No file with id '{after}' to list after.", param="after")
    items = [wire.file_object(v) for v in page[:limit]]   # expired files are left out in SQL, before LIMIT
    return web.Response(body=wire.encode(wire.list_object(items, len(page) > limit)), content_type="application/json")


async def _own_file(request: web.Request, conn):
    file_id = params.path_id(request, "file_id")
    view = await projections.get_file(conn, file_id, request[PROJECT])
    if view is None:
        raise not_found("file", file_id)
    return view


async def retrieve_file(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        view = await _own_file(request, conn)
    return web.Response(body=wire.encode(wire.file_object(view)), content_type="application/json")


async def delete_file(request: web.Request) -> web.Response:
    file_id = params.path_id(request, "file_id")
    async with request.app[POOL].acquire() as conn:
        try:
            await file_commands.delete_file(conn, request[PROJECT], file_id)
        except NotFound:
            raise not_found("file", file_id) from None
    return web.Response(body=wire.encode(wire.Deleted(id=file_id, object="file", deleted=True)),
                        content_type="application/json")


def attachment(filename: str) -> str:
    """Content-Disposition of a download, as RFC 6266 has it: the name whole in `filename*`
    (RFC 5987, percent-encoded UTF-8, which browsers decode), and for older clients a quoted
    `filename` of its printable ASCII with everything else as '_' (';' too: some parsers split on
    it even inside quotes). Neither can carry a quote that adds a parameter, nor a CR or LF that
    ends the header (that made downloads a 500)."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%;' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def file_content(request: web.Request) -> web.StreamResponse:
    pool = request.app[POOL]
    async with pool.acquire() as conn:
        view = await _own_file(request, conn)
    response = web.StreamResponse(headers={
        "Content-Type": "application/jsonl" if view.filename.endswith(".jsonl") else "application/octet-stream",
        "Content-Disposition": attachment(view.filename),
        # The bytes are the user's own: a browser must not guess them into HTML or script.
        "X-Content-Type-Options": "nosniff"})
    response.content_length = view.bytes
    await response.prepare(request)
    # The pool, not one connection: each query borrows a connection for a page, so a slow
    # reader holds none while it reads. An output or error file is derived from its batch's
    # request events (SPEC §12.5); an upload's bytes are stored. Neither changes once written.
    pages = results.file_pages(pool, view.batch_id, view.results) if view.results and view.batch_id \
        else blobs.iter_pieces(pool, view.id)
    return await send_pages(request, response, pages, file_id=view.id)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/files", uploads.create_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", retrieve_file)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
