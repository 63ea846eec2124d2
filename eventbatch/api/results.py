"""GET /v1/batches/{batch_id}/results (SPEC §12.1): the output and error lines recorded so far,
in record order, in any status; `x-results-cursor` is what to pass as `after` next time.

The answer ends at the batch's newest event when the request came in (its position is the
cursor, known before the first byte is sent), and is streamed in pages bounded by bytes, so a
batch of 50,000 megabyte answers is read in bounded memory. The lines are the files' lines,
byte for byte (result_lines.output_line), so all lines of a terminal batch are its output
file plus its error file."""

from __future__ import annotations

from aiohttp import web

from .. import projections, results
from ..result_lines import FAILED, SUCCEEDED
from . import params
from .errors import bad_request, not_found
from .state import POOL, PROJECT
from .streaming import send_pages

CURSOR_HEADER = "x-results-cursor"


def _cursor(raw: str | None) -> int:
    value = params.position(raw)
    if value is None:
        raise bad_request(f"'after' must be the {CURSOR_HEADER} header of an earlier answer; got '{raw[:40]}'.",
                          param="after")
    return value


async def batch_results(request: web.Request) -> web.StreamResponse:
    batch_id = params.path_id(request, "batch_id")
    kind = request.query.get("status")
    if kind is not None and kind not in (SUCCEEDED, FAILED):
        raise bad_request(f"status must be '{SUCCEEDED}' or '{FAILED}'; got '{kind[:40]}'.", param="status")
    after = _cursor(request.query.get("after"))
    pool = request.app[POOL]
    async with pool.acquire() as conn:
        if await projections.get_batch(conn, batch_id, request[PROJECT]) is None:
            raise not_found("batch", batch_id)
        upto = max(after, await results.last_position(conn, batch_id))
    response = web.StreamResponse(headers={"Content-Type": "application/jsonl", CURSOR_HEADER: str(upto),
                                           "Cache-Control": "no-store"})
    await response.prepare(request)
    return await send_pages(request, response, results.recorded_pages(pool, batch_id, after=after, upto=upto,
                                                                      kind=kind), batch_id=batch_id)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/batches/{batch_id}/results", batch_results)
