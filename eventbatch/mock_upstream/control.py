"""The routes under /_mock that let tests see what the gateway did to the mock."""

from __future__ import annotations

from aiohttp import web

from .envelopes import invalid, json_response
from .state import LEDGER


async def _stats(request: web.Request) -> web.Response:
    return json_response(200, request.app[LEDGER].stats())


async def _reset(request: web.Request) -> web.Response:
    request.app[LEDGER].reset()
    return json_response(200, {"reset": True})


async def _requests(request: web.Request) -> web.Response:
    try:
        since = float(request.query.get("since", "0"))
    except ValueError:
        return invalid("`since` must be a unix time in seconds.")
    return json_response(200, {"data": request.app[LEDGER].rows(since)})


def add_control_routes(app: web.Application) -> None:
    app.router.add_get("/_mock/stats", _stats)
    app.router.add_post("/_mock/reset", _reset)
    app.router.add_get("/_mock/requests", _requests)
