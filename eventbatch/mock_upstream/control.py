"""The routes under /_mock: what the gateway did to the mock, and changing how it behaves.

    GET  /_mock/stats            counts, statuses, concurrency, and `config`
    GET  /_mock/requests?since=T every request from T (unix seconds) on, in order of arrival:
                                 started_at, answered_at, path, status, body_sha, retry_after_ms
    GET  /_mock/attempts?since=T the same grouped by body_sha, with `early_retries`: attempts sent
                                 sooner than the previous attempt's 429 (`retry-after-ms`) allowed
                                 (both take `&body_sha=<hex>` for one body)
    POST /_mock/reset            forget what was seen (the settings stay)
    GET  /_mock/config           the settings
    POST /_mock/config           change settings on the running mock: a JSON object of
                                 MockSettings fields, e.g. {"latency_ms": 50}; also
                                 {"retry_after": S} for {"retry_after_ms": S * 1000};
                                 {"rate_limit_seconds": 20} answers everything 429 for 20 s from now
                                 ({"rate_limit_seconds": 0} ends it); {"outage_seconds": 60}
                                 refuses connections on the provider's port for 60 s from now
                                 ({"outage_seconds": 0} ends it); {"max_in_flight": N}

The provider's port serves these routes too, but not during an outage: use the control port.
"""

from __future__ import annotations

import math
import time
from typing import Any

import msgspec
from aiohttp import web

from . import settings as settings_module
from .envelopes import decode, invalid, json_response
from .state import LEDGER, PROVIDER, SETTINGS


def _config_view(app: web.Application) -> dict[str, Any]:
    """The settings, and when the windows they opened hold in unix time."""
    return {**settings_module.public_view(app[SETTINGS]), **app[PROVIDER].view()}


async def _stats(request: web.Request) -> web.Response:
    return json_response(200, {**request.app[LEDGER].stats(), "config": _config_view(request.app)})


async def _reset(request: web.Request) -> web.Response:
    request.app[LEDGER].reset()
    return json_response(200, {"reset": True})


def _log_query(request: web.Request) -> tuple[float, str | None] | web.Response:
    try:
        since = float(request.query.get("since", "0"))
    except ValueError:
        return invalid("`since` must be a unix time in seconds.")
    return since, request.query.get("body_sha")


async def _requests(request: web.Request) -> web.Response:
    query = _log_query(request)
    if isinstance(query, web.Response):
        return query
    return json_response(200, {"data": request.app[LEDGER].rows(*query)})


async def _attempts(request: web.Request) -> web.Response:
    query = _log_query(request)
    if isinstance(query, web.Response):
        return query
    return json_response(200, request.app[LEDGER].attempts(*query))


async def _get_config(request: web.Request) -> web.Response:
    return json_response(200, _config_view(request.app))


async def _change_config(request: web.Request) -> web.Response:
    try:
        changes = decode(await request.read())
    except msgspec.DecodeError:
        return invalid("The body must be a JSON object of settings to change, e.g. {\"latency_ms\": 50}.")
    if not isinstance(changes, dict):
        return invalid("The body must be a JSON object of settings to change, e.g. {\"latency_ms\": 50}.")
    if "retry_after" in changes:  # seconds, as `--retry-after` takes them
        seconds = changes.pop("retry_after")
        if seconds is not None and (not isinstance(seconds, (int, float)) or isinstance(seconds, bool)
                                    or not math.isfinite(seconds)):
            return invalid("`retry_after` must be a number of seconds, or null for 429s without retry headers.")
        changes["retry_after_ms"] = None if seconds is None else round(seconds * 1000)
    unknown = sorted(set(changes) - set(settings_module.FIELDS))
    if unknown:
        return invalid(f"Unknown setting {', '.join(map(repr, unknown))}; "
                       f"known: {', '.join(settings_module.FIELDS)}.")
    provider = request.app[PROVIDER]
    opens_outage = "outage_after" in changes or "outage_seconds" in changes
    if opens_outage and not provider.outages_followed:
        return invalid("An outage needs the mock served by start_mock or `eventbatch mock-upstream`: only "
                       "they can close its listening socket. Nothing was changed.")
    current = request.app[SETTINGS]
    try:
        new = settings_module.changed(current, changes)
    except msgspec.ValidationError as exc:
        return invalid(f"{exc}. Nothing was changed.")
    # The provider's handlers hold this very object, so the change is seen by the next request.
    for name in changes:
        setattr(current, name, getattr(new, name))
    if "seed" in changes:
        request.app[LEDGER].reseed(new.seed)
    if "rate_limit_after" in changes or "rate_limit_seconds" in changes:
        # A window asked for now starts now (or `rate_limit_after` from now), not from the start.
        current.rate_limit_after = new.rate_limit_after if "rate_limit_after" in changes else 0.0
        provider.rate_limit.open(current.rate_limit_after, current.rate_limit_seconds, time.monotonic())
    if opens_outage:
        current.outage_after = new.outage_after if "outage_after" in changes else 0.0
        provider.outage.open(current.outage_after, current.outage_seconds, time.monotonic())
        provider.outage_changed.set()
    return json_response(200, _config_view(request.app))


def add_control_routes(app: web.Application) -> None:
    app.router.add_get("/_mock/stats", _stats)
    app.router.add_post("/_mock/reset", _reset)
    app.router.add_get("/_mock/requests", _requests)
    app.router.add_get("/_mock/attempts", _attempts)
    app.router.add_get("/_mock/config", _get_config)
    app.router.add_post("/_mock/config", _change_config)
