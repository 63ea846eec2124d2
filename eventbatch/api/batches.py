"""/v1/batches"""

from __future__ import annotations

import re

import msgspec
from aiohttp import web

from .. import batches as batch_commands, projections
from ..worker.finalizer import settle_batch
from ..worker.validating import validate_batch
from ..batch import ENDPOINTS, Conflict
from . import params, wire
from .state import POOL, PROJECT, SERVES_MODEL, SETTINGS, VALIDATION_SLOTS, connection, spawn_after_commit
from .errors import ApiError, bad_request, invalid_value, not_found
from .paging import parse_limit


class ExpiresAfter(msgspec.Struct, forbid_unknown_fields=True):
    anchor: str
    seconds: int


class CreateBatchBody(msgspec.Struct, forbid_unknown_fields=True):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, object] | None = None
    output_expires_after: ExpiresAfter | None = None


_create_decoder = msgspec.json.Decoder(CreateBatchBody)
_PATH = re.compile(r"at `\$\.?([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")


async def decode_json(request: web.Request, decoder: msgspec.json.Decoder):
    """Decode a JSON body with a typed decoder; the 400 names the offending parameter."""
    if request.content_type != "application/json":
        raise bad_request("Send the request body as JSON with 'Content-Type: application/json'.")
    body = await request.read()
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = _PATH.search(text)
        # msgspec writes a dict's key as [...] (it does not say which): the param is the dict
        param = path.group(1).replace("[...]", "").replace("[", ".").replace("]", "") if path else None
        if m := _MISSING.search(text):
            field = ".".join(p for p in (param, m.group(1)) if p)
            raise bad_request(f"Missing required parameter: '{field}'.", param=field) from None
        if m := _UNKNOWN.search(text):
            field = ".".join(p for p in (param, m.group(1)) if p)
            raise bad_request(f"Unrecognized request argument supplied: '{field}'.", param=field) from None
        if param is None:   # the body itself is not an object ('[]', '"x"', '3'): msgspec names no field
            raise bad_request("The request body must be a JSON object, such as {\"input_file_id\": \"file-…\", "
                              "\"endpoint\": \"/v1/chat/completions\", \"completion_window\": \"24h\"}.") from None
        raise bad_request(f"Invalid type for '{param}': {text.split(' - at')[0]}.", param=param) from None
    except msgspec.DecodeError:
        raise bad_request("We could not parse the JSON body of your request. Send valid JSON "
                          "(see https://www.json.org).") from None
    except RecursionError:     # nested deeper than msgspec follows (~1,000 levels)
        raise bad_request("The JSON body of your request is nested too deeply to read. Send at most a few "
                          "levels of objects and arrays.") from None


def check_metadata(metadata: dict[str, object] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if len(metadata) > 16:
        raise bad_request(f"metadata may hold at most 16 pairs; got {len(metadata)}.", param="metadata")
    for k, v in metadata.items():
        if len(k) > 64:
            raise bad_request(f"metadata keys may be at most 64 characters; '{k[:20]}…' has {len(k)}.",
                              param=f"metadata.{k}")
        if not isinstance(v, str):
            raise bad_request(f"metadata values must be strings; '{k}' is not.", param=f"metadata.{k}")
        if not params.storable(k):
            raise bad_request("metadata keys must be text without NUL characters.", param="metadata")
        params.text(v, f"metadata.{k}", f"metadata value '{k}'")
        if len(v) > 512:
            raise bad_request(f"metadata values may be at most 512 characters; '{k}' has {len(v)}.",
                              param=f"metadata.{k}")
    return metadata  # type: ignore[return-value]


async def create_batch(request: web.Request) -> web.Response:
    body: CreateBatchBody = await decode_json(request, _create_decoder)
    project = request[PROJECT]
    params.an_id(body.input_file_id, "input_file_id")
    if body.endpoint not in ENDPOINTS:
        raise invalid_value("endpoint", body.endpoint, ENDPOINTS)
    if body.completion_window != "24h":
        raise invalid_value("completion_window", body.completion_window, ("24h",))
    metadata = check_metadata(body.metadata)
    expires_after = None
    if body.output_expires_after is not None:
        if body.output_expires_after.anchor != "created_at":
            raise bad_request("output_expires_after.anchor must be 'created_at'.", param="output_expires_after.anchor")
        if not 3600 <= body.output_expires_after.seconds <= 2_592_000:
            raise bad_request("output_expires_after.seconds must be between 3600 and 2592000.",
                              param="output_expires_after.seconds")
        expires_after = body.output_expires_after.seconds
    settings = request.app[SETTINGS]
    async with connection(request) as conn:
        try:
            state = await batch_commands.create_batch(
                conn, project=project, input_file_id=body.input_file_id, endpoint=body.endpoint,
                completion_window=body.completion_window, metadata=metadata, output_expires_after=expires_after,
                window_seconds=settings.window_seconds)
        except batch_commands.BadInputFile as exc:
            raise bad_request(str(exc), param="input_file_id") from None
    spawn_after_commit(request, lambda: validate_in_background(request.app, state.id))
    return web.Response(body=wire.encode(wire.batch_object(state)), content_type="application/json")


async def validate_in_background(app: web.Application, batch_id: str) -> None:
    async with app[VALIDATION_SLOTS]:
        await validate_batch(app[POOL], batch_id, app[SETTINGS].chunk_size, serves_model=app[SERVES_MODEL])
    # Cancelled while it validated: the cancel's own settle found a validation running and left it.
    await settle_batch(app[POOL], batch_id, app[SETTINGS].chunk_size)


async def retrieve_batch(request: web.Request) -> web.Response:
    batch_id = params.path_id(request, "batch_id")
    async with request.app[POOL].acquire() as conn:
        state = await projections.get_batch(conn, batch_id, request[PROJECT])
    if state is None:
        raise not_found("batch", batch_id)
    return web.Response(body=wire.encode(wire.batch_object(state)), content_type="application/json")


async def list_batches(request: web.Request) -> web.Response:
    project = request[PROJECT]
    limit = parse_limit(request.query, default=20, high=100)
    after = params.query_text(request.query, "after")
    async with request.app[POOL].acquire() as conn:
        page = await projections.batch_page(conn, project, after, limit + 1)
    if page is None:
        raise bad_request(f"No batch with id '{after}' to list after.", param="after")
    items = [wire.batch_object(b) for b in page[:limit]]
    return web.Response(body=wire.encode(wire.list_object(items, len(page) > limit)), content_type="application/json")


async def cancel_batch(request: web.Request) -> web.Response:
    batch_id = params.path_id(request, "batch_id")
    pool = request.app[POOL]
    async with connection(request) as conn:
        if await projections.get_batch(conn, batch_id, request[PROJECT]) is None:
            raise not_found("batch", batch_id)
        try:
            state = await batch_commands.cancel_batch(conn, batch_id)
        except Conflict as exc:
            raise ApiError(409, str(exc)) from None
    # Settle now if nothing is running; otherwise the workers settle it when they let go.
    spawn_after_commit(request, lambda: settle_batch(pool, batch_id, request.app[SETTINGS].chunk_size))
    return web.Response(body=wire.encode(wire.batch_object(state)), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", retrieve_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
