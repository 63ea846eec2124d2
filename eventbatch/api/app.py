"""create_app(): the HTTP API. Handlers are thin: parse, call a command or read a view, answer."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..config import Settings
from ..metrics import HTTP_REQUESTS
from ..pool import api_profile, bounded_waits, unavailable
from ..worker.providers import configured_model_check
from . import auth, batch_events, batches, dashboard, files, health, results, retry, uploads
from .idempotency import idempotency_middleware
from .slow_clients import body_deadline_middleware
from .errors import ApiError, ClientGone, error_response, parse_error_reason, payload_error
from .state import POOL, SERVES_MODEL, SETTINGS, TASKS, UPLOAD_SLOTS, VALIDATION_SLOTS, spawn

log = structlog.get_logger("eventbatch.api")

RETRY_AFTER_SECONDS = "2"   # a restarting Postgres is usually back within seconds

@web.middleware
async def errors_middleware(request: web.Request, handler):
    request_id = request.headers.get("x-request-id") or "req_" + uuid.uuid4().hex
    start = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        with bounded_waits():   # every wait on the database: seconds, not as long as it is stalled
            response = await handler(request)
    except ApiError as exc:
        response = exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        messages = {404: f"Unknown request URL: {request.method} {request.path}. Check the path and method.",
                    405: f"Method {request.method} is not allowed on {request.path}; use "
                         f"{' or '.join(sorted(getattr(exc, 'allowed_methods', ())))}.",
                    413: "The request body is too large."}
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = error_response(exc.status, messages.get(exc.status, exc.reason), headers=allow)
    except ClientGone as exc:
        return _client_gone(request, route, request_id, exc.event, **exc.fields)
    except web.RequestPayloadError as exc:
        # A body whose bytes do not decode (Content-Encoding, chunked framing), read by any handler.
        response = payload_error(exc).response()
        # The rest of the body cannot be read either: mark it ended, or aiohttp, draining it
        # after the answer, logs the same error again as an unhandled exception.
        request.content.feed_eof()
    except HttpProcessingError as exc:
        # A body aiohttp could not parse (bad chunked encoding, malformed multipart, …).
        response = error_response(400, f"The request body could not be parsed: {parse_error_reason(exc)}.")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and (request.transport is None or request.transport.is_closing()):
            # aiohttp's word for a client that hung up while its body was read (any route that
            # reads one, POST /v1/batches among them): nothing went wrong here.
            return _client_gone(request, route, request_id, "request_abandoned")
        if unavailable(exc):
            # Down, unreachable or stalled (pool.py): the client should come back, not report a bug.
            log.warning("database_unavailable", method=request.method, route=route, request_id=request_id,
                        error=type(exc).__name__)
            response = error_response(503, "The database is not answering right now. Retry in a few seconds.",
                                      code="database_unavailable", headers={"Retry-After": RETRY_AFTER_SECONDS})
        else:
            log.exception("unhandled_error", method=request.method, path=request.path, request_id=request_id)
            response = error_response(500, "The server had an error while processing your request. "
                                           "Retry, and report the x-request-id if it persists.")
    response.headers["x-request-id"] = request_id
    HTTP_REQUESTS.inc(request.method, route, response.status)
    if route not in QUIET_ROUTES:
        log.info("http_request", method=request.method, route=route, status=response.status,
                 duration_ms=round((time.perf_counter() - start) * 1000, 2), request_id=request_id)
    return response


def _client_gone(request: web.Request, route: str, request_id: str, event: str, **fields) -> web.Response:
    # Nobody is left to answer: one line, and the metric (as 499, the usual mark of it).
    HTTP_REQUESTS.inc(request.method, route, 499)
    log.info(event, method=request.method, route=route, request_id=request_id, **fields)
    return web.Response(status=499)


QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})  # polled every few seconds: counted, not logged


def create_app(settings: Settings, pool: asyncpg.Pool | None = None, *, database_url: str | None = None,
               pool_size: int = 10) -> web.Application:
    """The API. With `pool`, the caller owns the pool; otherwise it is opened on startup."""
    app = web.Application(middlewares=[errors_middleware, auth.auth_middleware, body_deadline_middleware,
                                       idempotency_middleware],
                          client_max_size=1024 ** 2)
    app[SETTINGS] = settings
    app[TASKS] = set()
    auth.install(app)
    app[UPLOAD_SLOTS] = asyncio.Semaphore(max(1, pool_size // 4))
    app[VALIDATION_SLOTS] = asyncio.Semaphore(2)
    app[SERVES_MODEL] = configured_model_check(settings)   # a bad provider config fails here, at start

    async def pool_ctx(app: web.Application):
        if pool is not None:
            app[POOL] = pool
        else:
            from ..db import create_pool
            app[POOL] = await create_pool(database_url, kind="api", max_size=pool_size,
                                          server_settings=api_profile(settings.upload_read_timeout_seconds))
        spawn(app, uploads.drop_orphan_pieces(app))
        yield
        for t in list(app[TASKS]):
            t.cancel()
        await asyncio.gather(*app[TASKS], return_exceptions=True)
        if pool is None:
            await app[POOL].close()

    app.cleanup_ctx.append(pool_ctx)
    files.add_routes(app)
    batches.add_routes(app)
    batch_events.add_routes(app)
    results.add_routes(app)
    retry.add_routes(app)
    health.add_routes(app)
    dashboard.add_routes(app)
    return app
