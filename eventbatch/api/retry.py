"""POST /v1/batches/{batch_id}/retry (SPEC §12.2): a new batch over the requests that failed.
Answers the new batch object (with `retry_of`); 409 while the batch has not ended, 400 when
nothing failed. The command is eventbatch/retry.py."""

from __future__ import annotations

from aiohttp import web

from .. import retry
from ..batch import Conflict, NothingToRetry
from ..store import NotFound
from ..worker.validating import validate_batch
from . import wire
from .errors import ApiError, bad_request, not_found
from .state import POOL, PROJECT, SERVES_MODEL, SETTINGS, VALIDATION_SLOTS, spawn


async def retry_batch(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    async with request.app[POOL].acquire() as conn:
        try:
            state = await retry.retry_batch(conn, project=request[PROJECT], batch_id=batch_id,
                                            window_seconds=request.app[SETTINGS].window_seconds)
        except NotFound:
            raise not_found("batch", batch_id) from None
        except (Conflict, retry.InputGone) as exc:
            raise ApiError(409, str(exc)) from None
        except NothingToRetry as exc:
            raise bad_request(str(exc)) from None
    spawn(request.app, _validate(request.app, state.id))
    return web.Response(body=wire.encode(wire.batch_object(state)), content_type="application/json")


async def _validate(app: web.Application, batch_id: str) -> None:
    # As after a create (api/batches.py): validation in the background, a few at a time.
    async with app[VALIDATION_SLOTS]:
        await validate_batch(app[POOL], batch_id, app[SETTINGS].chunk_size, serves_model=app[SERVES_MODEL])


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/batches/{batch_id}/retry", retry_batch)
