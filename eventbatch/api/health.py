"""Probes for orchestrators. /healthz: the process answers (no database, so a database outage
does not get every api process restarted). /readyz: the database answers and holds every
migration this release knows, so traffic reaches only processes that can serve it.

Outside /v1, hence unauthenticated; they say nothing of any tenant."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import structlog
from aiohttp import web

from .. import db, metrics
from ..pool import bounded_waits
from ..sql import Q
from . import wire
from .state import POOL
from .errors import error_response

log = structlog.get_logger("eventbatch.api")

# Shorter than the probes' timeout in ops/k8s (3 s): the orchestrator reads our 503 and its
# reason instead of timing out on its own.
READY_TIMEOUT_SECONDS = 2.5


class Probe(msgspec.Struct):
    status: str


async def metrics_text(request: web.Request) -> web.Response:
    """Prometheus text format: this process's counters, and system gauges read from the database."""
    async with request.app[POOL].acquire() as conn:
        text = await metrics.render(conn)
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=wire.encode(Probe("ok")), content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    try:
        # Its own limit, also on a worker's probe port (no API middleware there): each wait is cut
        # in the client (a frozen server enforces nothing), and the whole probe within the limit.
        with bounded_waits(READY_TIMEOUT_SECONDS - 0.5):
            async with asyncio.timeout(READY_TIMEOUT_SECONDS), request.app[POOL].acquire() as conn:
                await conn.fetchval(Q.database_ping)
                pending = await db.pending_migrations(conn)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("not_ready", reason="database_unavailable", error=type(exc).__name__)
        return error_response(503, f"Not ready: the database did not answer ({type(exc).__name__}).",
                              code="database_unavailable")
    if pending:
        log.warning("not_ready", reason="migrations_pending", pending=pending)
        return error_response(503, f"Not ready: {len(pending)} database migration(s) pending "
                                   f"({', '.join(pending)}); run 'eventbatch migrate'.",
                              code="migrations_pending")
    return web.Response(body=wire.encode(Probe("ready")), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
