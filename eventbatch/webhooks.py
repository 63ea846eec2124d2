"""Webhooks (SPEC §12.4): the endpoints an operator registers for a project, the deliveries owed
when one of the project's batches ends, their payload and signature, and their retry schedule.
Sending is worker/webhooks.py.

Targets come only from operator configuration (`eventbatch webhooks add`), never from an API
call. A delivery is owed in the transaction that appends the batch's terminal event
(`owe_deliveries`, called by batches.append, which every terminal event passes through): it
exists if and only if the batch's end commits. Each delivery is a stream 'webhook-<id>' in the
log: `webhook_delivery_owed`, then one `webhook_attempted` per attempt.

Signatures follow the Standard Webhooks specification with its reference package
(`standardwebhooks`): headers webhook-id (the delivery's id, the same at every attempt),
webhook-timestamp (the attempt's time) and webhook-signature `v1,<base64 HMAC-SHA256 of
id.timestamp.body>` under the endpoint's secret, printed once as `whsec_<base64>`.
"""

from __future__ import annotations

import base64
import random
import secrets
import sys
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

import asyncpg
import msgspec
import structlog
from standardwebhooks import Webhook

from . import events as ev, store
from .batch import BatchState
from .config import Settings, SettingsError
from .sql import Q

log = structlog.get_logger("eventbatch")

EVENT_TYPES = ("batch.completed", "batch.failed", "batch.cancelled", "batch.expired")
MAX_DELAY_SECONDS = 12 * 3600.0
GROWTH = 4.0


def stream(delivery_id: str) -> str:
    return f"webhook-{delivery_id}"


def event_type(state: BatchState) -> str:
    """The webhook event of a batch that has just ended: OpenAI's names, batch.<status>."""
    return f"batch.{state.status}"


# --- the payload and its signature -----------------------------------------------------------

class _EventData(msgspec.Struct):
    id: str


class EventPayload(msgspec.Struct):
    """OpenAI's webhook event object, in its field order."""
    id: str
    object: str
    type: str
    created_at: int
    data: _EventData


def payload(event_id: str, type_: str, batch_id: str, at: float) -> bytes:
    return msgspec.json.encode(EventPayload(id=event_id, object="event", type=type_, created_at=int(at),
                                            data=_EventData(id=batch_id)))


def signed_headers(secret: str, delivery_id: str, at: float, body: bytes) -> dict[str, str]:
    timestamp = datetime.fromtimestamp(int(at), tz=timezone.utc)
    return {"webhook-id": delivery_id, "webhook-timestamp": str(int(at)),
            "webhook-signature": Webhook(secret).sign(delivery_id, timestamp, body.decode()),
            "Content-Type": "application/json", "User-Agent": "eventbatch-webhooks"}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# --- the retry schedule --------------------------------------------------------------------

def next_attempt_at(attempts: int, owed_at: float, now: float, settings: Settings,
                    jitter: random.Random | None = None) -> float | None:
    """When to try again after `attempts` failed attempts: the backoff grows 4× per attempt
    (5 s, 20 s, 80 s, … by default) up to 12 h, with ±10% jitter so that deliveries owed
    together do not come back together; None once that is past the retry window (72 h)."""
    delay = min(settings.webhook_backoff_seconds * GROWTH ** (attempts - 1), MAX_DELAY_SECONDS)
    delay *= 1 + ((jitter or random).random() - 0.5) / 5
    at = now + delay
    return None if at > owed_at + settings.webhook_retry_seconds else at


# --- deliveries owed -------------------------------------------------------------------------

async def owe_deliveries(conn: asyncpg.Connection, state: BatchState, at: float) -> int:
    """In the transaction of the batch's terminal event: one delivery per endpoint of its
    project that asked for this event type."""
    type_ = event_type(state)
    endpoints = [e for e in await conn.fetch(Q.webhook_endpoints_of_project, state.project)
                 if type_ in e["event_types"]]
    if not endpoints:
        return 0
    event_id = "evt_" + secrets.token_hex(12)   # one event, sent to each endpoint
    body = payload(event_id, type_, state.id, at)
    for e in endpoints:
        delivery_id = "msg_" + secrets.token_hex(12)
        await conn.execute(Q.webhook_delivery_insert, delivery_id, e["id"], state.id, body)
        await store.append(conn, stream(delivery_id), 0, [ev.WebhookDeliveryOwed(
            delivery_id=delivery_id, endpoint_id=e["id"], batch_id=state.id, event_id=event_id,
            event_type=type_, url=e["url"], at=at)])
    log.info("webhook_deliveries_owed", batch_id=state.id, event_type=type_, endpoints=len(endpoints))
    return len(endpoints)


async def record_attempt(conn: asyncpg.Connection, delivery_id: str, attempt: ev.WebhookAttempted) -> bool:
    """Append the attempt to the delivery's stream and move the outbox row on, under its lock.
    An attempt that outlived its lease (another worker claimed the delivery since) is still
    recorded, but leaves the row to the later attempt. False when the row is gone."""
    async with conn.transaction():
        row = await conn.fetchrow(Q.webhook_delivery_lock, delivery_id)
        if row is None:
            return False
        await store.append(conn, stream(delivery_id), row["version"], [attempt])
        state, next_at = row["state"], None
        if row["state"] == "pending" and row["attempts"] == attempt.attempt:
            state = "delivered" if attempt.delivered else "pending" if attempt.next_attempt_at else "gave_up"
            next_at = attempt.next_attempt_at
        await conn.execute(Q.webhook_delivery_record, delivery_id, row["version"] + 1, state, next_at)
        return True


# --- the operator's commands -----------------------------------------------------------------

def parse_event_types(raw: str | None) -> list[str]:
    if raw is None:
        return list(EVENT_TYPES)
    chosen = [t.strip() for t in raw.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in EVENT_TYPES]
    if unknown or not chosen:
        raise SettingsError(f"--events takes a comma-separated list of {', '.join(EVENT_TYPES)}; "
                            f"got {raw!r}.")
    return list(dict.fromkeys(chosen))


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"--url {url!r} is not an http(s) URL; give the full address of the receiver, "
                            "e.g. https://example.com/hooks/eventbatch.")
    if parts.username or parts.password:
        raise SettingsError("--url must not carry a user or password; the receiver checks the signature instead.")
    return url


async def add_endpoint(conn: asyncpg.Connection, project: str, url: str, event_types: list[str]) -> tuple[str, str]:
    endpoint_id, secret = "whep_" + secrets.token_hex(12), new_secret()
    await conn.execute(Q.webhook_endpoint_insert, endpoint_id, project, url, event_types, secret)
    return endpoint_id, secret


async def remove_endpoint(conn: asyncpg.Connection, endpoint_id: str) -> asyncpg.Record | None:
    """Remove the endpoint; its pending deliveries are dropped (each with an event saying so)."""
    async with conn.transaction():
        removed = await conn.fetchrow(Q.webhook_endpoint_remove, endpoint_id)
        if removed is None:
            return None
        for (delivery_id,) in await conn.fetch(Q.webhook_deliveries_pending_of_endpoint, endpoint_id):
            row = await conn.fetchrow(Q.webhook_delivery_lock, delivery_id)
            await store.append(conn, stream(delivery_id), row["version"], [ev.WebhookDeliveryDropped(
                delivery_id=delivery_id, reason="endpoint_removed", at=time.time())])
            await conn.execute(Q.webhook_delivery_record, delivery_id, row["version"] + 1, "dropped", None)
        return removed


async def webhooks_command(settings: Settings, args) -> int:
    """`eventbatch webhooks add | list | remove`."""
    from . import db
    if args.webhooks_command == "add":
        from .api_keys import project_name
        project = project_name(args.project, "whose batches it hears of")
        url, types = check_url(args.url), parse_event_types(args.events)
    pool = await db.open_database(settings, max_size=1)
    try:
        async with pool.acquire() as conn:
            match args.webhooks_command:
                case "add":
                    endpoint_id, secret = await add_endpoint(conn, project, url, types)
                    print(f"Added webhook endpoint {endpoint_id} for project '{project}': {url} "
                          f"({', '.join(types)}).")
                    print("Its signing secret is shown once; store it where the receiver verifies signatures:")
                    print(secret)
                    if not await conn.fetchval(Q.key_project_known, project):
                        print(f"eventbatch: note: no API key belongs to project '{project}' yet; the endpoint hears "
                              f"of its batches once one does (eventbatch keys create --project {project}). If the "
                              "name is a typo, remove the endpoint and add it again.", file=sys.stderr)
                case "list":
                    rows = await conn.fetch(Q.webhook_endpoint_list, args.project)
                    if not rows:
                        print("No webhook endpoints." if args.project is None
                              else f"No webhook endpoints for project '{args.project}'.")
                    for r in rows:
                        print(f"{r['id']}  {r['project']}  {r['url']}  {','.join(r['event_types'])}  "
                              f"created {r['created_at'].isoformat(timespec='seconds')}")
                case "remove":
                    removed = await remove_endpoint(conn, args.endpoint_id)
                    if removed is None:
                        raise SettingsError(f"no webhook endpoint '{args.endpoint_id}'; "
                                            "see `eventbatch webhooks list` for the ids.")
                    print(f"Removed webhook endpoint {args.endpoint_id} ({removed['url']}) of project "
                          f"'{removed['project']}'.")
    finally:
        await pool.close()
    return 0
