"""`eventbatch replay BATCH_ID`: a batch's history from the log, in order, for audits.

It reads the log in pages, so a 50,000-request batch replays in bounded memory, and folds the
events with the domain's own evolve to show the status after each one. The batch's webhook
deliveries (streams 'webhook-<delivery id>': owed, then every attempt, SPEC §12.4) are shown
in their place in the log, after the terminal event that owed them."""

from __future__ import annotations

import sys

import msgspec

from datetime import datetime, timezone
from typing import AsyncIterator

from . import db, events as ev, store
from .sql import Q
from .batch import evolve
from .config import Settings, SettingsError


class ReplayLine(msgspec.Struct, omit_defaults=True):
    position: int
    time: str
    event: str
    status: str | None = None
    custom_id: str | None = None
    index: int | None = None
    attempts: int | None = None
    status_code: int | None = None
    error_code: str | None = None
    delivery_id: str | None = None
    detail: str | None = None


def _describe(e: ev.Event, status: str | None) -> dict:
    match e:
        case ev.RequestSucceeded() | ev.RequestFailed():
            tried = ", ".join(f"{a.status_code or a.error} ({a.duration_ms} ms)" for a in e.attempts)
            return dict(custom_id=e.custom_id, index=e.index, attempts=len(e.attempts),
                        status_code=e.status_code, error_code=getattr(e, "error_code", None),
                        detail=f"tried: {tried}" if tried else None)
        case ev.BatchCreated():
            return dict(status=status, detail=f"endpoint={e.endpoint} input_file_id={e.input_file_id}")
        case ev.BatchValidated():
            return dict(detail=f"total={e.total} model={e.model}")
        case ev.BatchValidationFailed():
            return dict(status=status, detail=f"{e.error_count} bad line(s)")
        case ev.BatchOutputWritten():
            return dict(detail=f"output_file_id={e.output_file_id} error_file_id={e.error_file_id}")
        case ev.WebhookDeliveryOwed():
            return dict(delivery_id=e.delivery_id,
                        detail=f"{e.event_type} to {e.url} (endpoint {e.endpoint_id}, event {e.event_id})")
        case ev.WebhookAttempted():
            if e.delivered:
                outcome = "delivered"
            elif e.next_attempt_at is None:
                outcome = "gave up"
            else:
                outcome = "next attempt at " + datetime.fromtimestamp(e.next_attempt_at, timezone.utc).isoformat(
                    timespec="seconds")
            return dict(delivery_id=e.delivery_id, attempts=e.attempt, status_code=e.status_code,
                        detail=f"{e.error + '; ' if e.error else ''}{outcome} ({e.duration_ms} ms)")
        case ev.WebhookDeliveryDropped():
            return dict(delivery_id=e.delivery_id, detail=e.reason)
        case _:
            return dict(status=status)


def _write(out, enc: msgspec.json.Encoder, as_json: bool, line: ReplayLine) -> None:
    if as_json:
        out.write(enc.encode(line).decode() + "\n")
    else:
        fields = " ".join(f"{k}={v}" for k, v in msgspec.structs.asdict(line).items()
                          if v is not None and k not in ("position", "time", "event"))
        out.write(f"{line.time}  {line.event:<24} {fields}\n")


async def _history(conn, batch_id: str) -> AsyncIterator:
    """The batch's events and its webhook deliveries' events, merged in log order. A batch has
    a few deliveries of a few dozen attempts at most: those are read whole, the batch in pages."""
    streams = [r[0] for r in await conn.fetch(Q.webhook_delivery_streams_of_batch, batch_id)]
    hooks = list(await conn.fetch(Q.webhook_events_of_streams, streams)) if streams else []
    hooks.reverse()
    async for row in store.read_batch_events(conn, batch_id):
        while hooks and hooks[-1]["position"] < row["position"]:
            yield hooks.pop()
        yield row
    while hooks:
        yield hooks.pop()


async def replay(settings: Settings, batch_id: str, *, as_json: bool, requests: bool) -> int:
    pool = await db.open_database(settings, max_size=1)
    enc = msgspec.json.Encoder()
    out = sys.stdout
    try:
        async with pool.acquire() as conn:
            if not await store.batch_in_log(conn, batch_id):
                raise SettingsError(f"no batch '{batch_id}' in the log; check the id (eventbatch replay BATCH_ID).")
            state = None
            first_at = last_at = None
            succeeded = failed = retried = attempts = upstream_ms = 0
            webhook_attempts = 0
            async for row in _history(conn, batch_id):
                e = ev.decode(row["data"])
                at = row["recorded_at"]
                if isinstance(e, ev.WEBHOOK_EVENTS):
                    webhook_attempts += isinstance(e, ev.WebhookAttempted)
                    _write(out, enc, as_json, ReplayLine(position=row["position"],
                                                         time=at.isoformat(timespec="milliseconds"),
                                                         event=row["type"], **_describe(e, None)))
                    continue
                first_at = first_at or at
                last_at = at
                is_request = isinstance(e, ev.REQUEST_OUTCOMES)
                if is_request:
                    succeeded += isinstance(e, ev.RequestSucceeded)
                    failed += isinstance(e, ev.RequestFailed)
                    retried += len(e.attempts) > 1
                    attempts += len(e.attempts)
                    upstream_ms += sum(a.duration_ms for a in e.attempts)
                state = evolve(state, e)
                if is_request and not requests:
                    continue
                _write(out, enc, as_json, ReplayLine(position=row["position"],
                                                     time=at.isoformat(timespec="milliseconds"), event=row["type"],
                                                     **_describe(e, state.status if state else None)))
            duration = (last_at - first_at).total_seconds() if first_at else 0.0
            summary = dict(batch_id=batch_id, status=state.status if state else None,
                           requests_succeeded=succeeded, requests_failed=failed, requests_retried=retried,
                           upstream_attempts=attempts,
                           mean_attempt_ms=round(upstream_ms / attempts, 1) if attempts else None,
                           duration_seconds=round(duration, 3), webhook_attempts=webhook_attempts)
            if as_json:
                out.write(enc.encode({"summary": summary}).decode() + "\n")
            else:
                out.write(f"-- {batch_id}: {summary['status']}; {succeeded} succeeded, {failed} failed, "
                          f"{retried} retried; {_attempts_said(attempts, summary['mean_attempt_ms'])}; "
                          f"{duration:.3f}s from first to last event"
                          f"{f'; {webhook_attempts} webhook attempt(s)' if webhook_attempts else ''}\n")
    finally:
        await pool.close()
    return 0


def _attempts_said(attempts: int, mean_ms: float | None) -> str:
    # A batch that never reached the provider (it failed validation, was cancelled first) has
    # no mean to tell: "mean None ms" reads like a bug.
    if not attempts:
        return "no upstream attempts"
    return f"{attempts} upstream attempt{'s' if attempts != 1 else ''}, mean {mean_ms} ms"
