"""POST /v1/batches/{batch_id}/retry (SPEC §12.2): a new batch over the requests that failed.
Answers the new batch object (with `retry_of`); 409 while the batch has not ended, 400 when
nothing failed. The command is eventbatch/retry.py."""

from __future__ import annotations

from aiohttp import web

from .. import retry
from ..batch import Conflict, NothingToRetry
from ..store import NotFound
from . import params, wire
from .batches import validate_in_background
from .errors import ApiError, bad_request, not_found
from .state import PROJECT, SETTINGS, connection, spawn_after_commit


async def retry_batch(request: web.Request) -> web.Response:
    batch_id = params.path_id(request, "batch_id")
    async with connection(request) as conn:
        try:
            state = await retry.retry_batch(conn, project=request[PROJECT], batch_id=batch_id,
                                            window_seconds=request.app[SETTINGS].window_seconds)
        except NotFound:
            raise not_found("batch", batch_id) from None
        except (Conflict, retry.InputGone) as exc:
            raise ApiError(409, str(exc)) from None
        except NothingToRetry as exc:
            raise bad_request(str(exc)) from None
    # As after a create: the new batch is validated in the background once it is committed.
    spawn_after_commit(request, lambda: validate_in_background(request.app, state.id))
    return web.Response(body=wire.encode(wire.batch_object(state)), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/batches/{batch_id}/retry", retry_batch)
