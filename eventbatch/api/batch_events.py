"""GET /v1/batches/{batch_id}/events: the batch's events, oldest first, for audits and live
progress. JSON: one page per request (`after`, `limit`). `Accept: text/event-stream`: a
server-sent-events feed of every event so far, then of new ones until the batch has ended.

Following one batch by position is safe: every append to a batch first locks its view row
(store.py), so the batch's events commit in position order and "position > last sent" never
skips one that commits late. Polling the table makes it work whichever process writes.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import msgspec
import structlog
from aiohttp import web

from .. import events as ev, projections, store
from ..batch import TERMINAL
from . import auth, params, wire
from .state import POOL, PROJECT
from .errors import bad_request, not_found
from .paging import parse_limit

log = structlog.get_logger("eventbatch.api")

POLL_SECONDS = 0.2
KEEPALIVE_SECONDS = 15.0
STREAM_PAGE = 500
# Set when the app shuts down: open feeds end at once instead of holding the shutdown up.
STOPPING = web.AppKey("batch_events_stopping", asyncio.Event)


class BatchEventObject(msgspec.Struct):
    id: str                 # the event's position in the log: what `after` and Last-Event-ID take
    object: str
    type: str
    created_at: float
    data: msgspec.Raw       # the event's msgspec JSON as in the log, passed through without decoding


def event_object(row: asyncpg.Record) -> BatchEventObject:
    return BatchEventObject(id=str(row["position"]), object="batch.event", type=row["type"],
                            created_at=row["recorded_at"].timestamp(), data=msgspec.Raw(ev.plain(row["data"])))


def sse_message(row: asyncpg.Record) -> bytes:
    # Compact JSON has no newline in it, so one `data:` line carries the whole object.
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (row["position"], row["type"].encode(),
                                                 wire.encode(event_object(row)))


def parse_position(raw: str | None, param: str | None) -> int:
    value = params.position(raw)
    if value is None:
        where = f"'{param}'" if param else "Last-Event-ID"
        raise bad_request(f"{where} must be the id of an event from an earlier page; got '{raw[:40]}'.",
                          param=param)
    return value


async def batch_events(request: web.Request) -> web.StreamResponse:
    batch_id = params.path_id(request, "batch_id")
    streaming = "text/event-stream" in request.headers.get("Accept", "")
    # A reconnecting EventSource sends Last-Event-ID and repeats the original URL: the header wins.
    if streaming and "Last-Event-ID" in request.headers:
        after = parse_position(request.headers["Last-Event-ID"].strip(), None)
    else:
        after = parse_position(request.query.get("after"), "after")
    limit = parse_limit(request.query, default=100, high=1000)
    async with request.app[POOL].acquire() as conn:
        if await projections.get_batch(conn, batch_id, request[PROJECT]) is None:
            raise not_found("batch", batch_id)
        rows = None if streaming else await store.batch_events_page(conn, batch_id, after=after, limit=limit + 1)
    if rows is None:
        return await follow_batch(request, batch_id, after)
    items = [event_object(r) for r in rows[:limit]]
    # limit + 1 read: one more row than shown says more follow; so does a page cut short by bytes
    return web.Response(body=wire.encode(wire.list_object(items, store.more_after(rows, limit + 1))),
                        content_type="application/json")


async def follow_batch(request: web.Request, batch_id: str, after: int) -> web.StreamResponse:
    pool = request.app[POOL]
    stopping = request.app[STOPPING]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})  # a buffering proxy (nginx) would hold the feed back
    await response.prepare(request)
    if request.method == "HEAD":      # the headers alone (api/streaming.py says why)
        await response.write_eof()
        return response
    log.info("batch_events_stream_opened", batch_id=batch_id, after=after)
    last, sent, quiet_since, reason = after, 0, time.monotonic(), "batch_ended"
    try:
        while True:
            if stopping.is_set():
                reason = "shutdown"
                break
            if request.transport is None or request.transport.is_closing():
                reason = "client_gone"
                break
            if not await auth.still_authorized(request):
                reason = "key_revoked"
                break
            async with pool.acquire() as conn:
                # Status before events: a terminal status commits in the same transaction as the
                # terminal event, so once it is seen here the read below holds every event up to it.
                status = await projections.batch_status(conn, batch_id)
                rows = await store.batch_events_page(conn, batch_id, after=last, limit=STREAM_PAGE)
            if rows:
                await response.write(b"".join(sse_message(r) for r in rows))
                last, sent, quiet_since = rows[-1]["position"], sent + len(rows), time.monotonic()
                if store.more_after(rows, STREAM_PAGE):
                    continue  # more are waiting: no pause
            if status is None or status in TERMINAL:
                break
            if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                await response.write(b": keepalive\n\n")
                quiet_since = time.monotonic()
            try:
                await asyncio.wait_for(stopping.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
        await response.write_eof()
    except ConnectionResetError:
        reason = "client_gone"
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        # The headers are sent: no error envelope is possible. The client resumes with Last-Event-ID.
        reason = "database_error"
        log.warning("batch_events_stream_failed", batch_id=batch_id, last=last, error=type(exc).__name__)
    log.info("batch_events_stream_closed", batch_id=batch_id, reason=reason, events_sent=sent, last=last)
    return response


async def _stop_feeds(app: web.Application) -> None:
    app[STOPPING].set()


def add_routes(app: web.Application) -> None:
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_stop_feeds)
    app.router.add_get("/v1/batches/{batch_id}/events", batch_events)
