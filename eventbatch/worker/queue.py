"""The work queue: claim chunks with a lease, renew it, fence stale holders, release or finish.

The statements, and the protocol in prose, are on one page: eventbatch/sql/queue.sql. This
module gives them names a caller can read; it decides nothing about batches (the domain does).
"""

from __future__ import annotations

from typing import Collection

import asyncpg
import msgspec

from .. import blobs
from ..batch import RUNNABLE
from ..metrics import CLAIM_STATEMENTS
from .providers import Route
from ..sql import Q
from ..validation import iter_chunk_lines
from ..validation.lines import BAD_JSON

_RUNNABLE = sorted(RUNNABLE)


EVERY_MODEL = Route(models=[], catch_all=True, named=[])


async def claim(conn, owner: str, chunks: int, lease_seconds: float, route: Route = EVERY_MODEL,
                skip_projects: Collection[str] = ()) -> list[asyncpg.Record]:
    """Lease up to `chunks` open chunks of running batches bound for the provider `route` describes
    (default: any), skipping any another worker holds, one project at a time in turn (SPEC §11
    fair share); none of the projects in `skip_projects`."""
    CLAIM_STATEMENTS.inc()
    return await conn.fetch(Q.chunk_claim, owner, chunks, lease_seconds, _RUNNABLE, route.models,
                            route.catch_all, route.named, sorted(skip_projects))


async def heartbeat(conn, owner: str, lease_seconds: float, batch_ids: list[str], chunk_nos: list[int],
                    epochs: list[int]) -> dict[tuple[str, int], int]:
    """Renew the leases still held at the claimed epochs; returns {(batch_id, chunk_no): epoch}."""
    rows = await conn.fetch(Q.lease_heartbeat, owner, lease_seconds, batch_ids, chunk_nos, epochs)
    return {(r["batch_id"], r["chunk_no"]): r["lease_epoch"] for r in rows}


async def lock_leases(conn, batch_id: str, chunk_nos: list[int]) -> dict[int, asyncpg.Record]:
    """The fence: lock the lease rows a recording transaction writes for."""
    return {r["chunk_no"]: r for r in await conn.fetch(Q.lease_lock, batch_id, sorted(chunk_nos))}


async def mark_done(conn, batch_id: str, chunk_nos: list[int]) -> None:
    await conn.execute(Q.chunk_mark_done, batch_id, chunk_nos)


async def release(conn, batch_id: str, chunk_nos: list[int], owner: str) -> None:
    await conn.execute(Q.lease_release, batch_id, chunk_nos, owner)


async def release_until(conn, batch_id: str, chunk_nos: list[int], owner: str, delays: list[float | None]) -> None:
    """Give chunks back, each claimable after its delay in seconds (None: at once)."""
    await conn.execute(Q.lease_release_until, batch_id, chunk_nos, owner, delays)


async def wake(conn, keys: list[tuple[str, int]]) -> None:
    """Chunks given back to wait (for a paused provider) are claimable now."""
    if keys:
        await conn.execute(Q.chunk_wake, [b for b, _ in keys], [c for _, c in keys])


async def read_failed(conn, batch_id: str, chunk_no: int, owner: str, epoch: int, delay: float) -> int | None:
    """Count a failure to read the chunk's lines and give it back for `delay` seconds; how many
    times it failed so (None: the lease was not ours any more)."""
    return await conn.fetchval(Q.chunk_read_failed, batch_id, chunk_no, owner, delay, epoch)


async def read_failures(conn, batch_id: str, chunk_no: int) -> int:
    return await conn.fetchval(Q.chunk_read_failures, batch_id, chunk_no) or 0


async def save_retries(conn, batch_id: str, indexes: list[int], attempts: list[bytes], counted: list[int],
                       delays: list[float]) -> None:
    await conn.execute(Q.retry_save, batch_id, indexes, attempts, counted, delays)


async def retries_in(conn, batch_id: str, start: int, end: int) -> list[asyncpg.Record]:
    """The waiting requests among [start, end): request_index, attempts, counted, due_in (s)."""
    return await conn.fetch(Q.retry_list_in_range, batch_id, start, end)


async def any_open(conn, batch_id: str) -> bool:
    return await conn.fetchval(Q.chunk_any_open, batch_id)


async def live_leases(conn, batch_id: str) -> int:
    return await conn.fetchval(Q.lease_count_live, batch_id)


async def open_chunks(conn, batch_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(Q.chunk_list_open, batch_id)


async def close_all(conn, batch_id: str) -> None:
    """At the batch's end: every chunk done, every stale lease holder fenced off, and the batch
    out of the fair-share rotation."""
    await conn.execute(Q.chunk_close_all, batch_id)
    await conn.execute(Q.work_batch_leave, batch_id)
    await conn.execute(Q.retry_delete_batch, batch_id)


class _CustomId(msgspec.Struct):
    custom_id: str = ""


_custom_id = msgspec.json.Decoder(_CustomId)


async def custom_ids(conn, file_id: str, start: int, end: int, count: int) -> list[str]:
    """Each request's custom_id as far as the chunk's bytes can still be read ("" where they
    cannot): outcomes for requests whose lines are damaged or gone still name what they can."""
    data = await blobs.read_range(conn, file_id, start, end)
    return ids_by_position(data, count, whole=len(data) == end - start)


def ids_by_position(data: bytes, count: int, *, whole: bool) -> list[str]:
    """The custom_ids of a damaged chunk's `count` requests, by position, "" where unknown. Pure.

    Damage can add or remove a newline, and then every line after it sits at another position:
    a custom_id read there would name the wrong request (twice, with the request it belongs to
    elsewhere). So ids are trusted from the chunk's first line up to the first that cannot be
    read, and, when the bytes are all there (`whole`), from its last line back to the last that
    cannot: positions counted from either end are right whatever happened between. In between
    no id is guessed."""
    lines = [line for line in data.split(b"\n") if line.strip()]
    read: list[str | None] = []
    for line in lines:
        try:
            read.append(_custom_id.decode(line).custom_id)
        except (msgspec.DecodeError, msgspec.ValidationError):
            read.append(None)
    ids = [""] * count
    head = next((i for i, cid in enumerate(read) if cid is None), None)
    if head is None:
        # Every line reads: right if they are as many as the requests; if not, a line was lost
        # or added somewhere that cannot be told, and no position is certain.
        return read if len(read) == count else ids
    head = min(head, count)
    ids[:head] = read[:head]
    if whole:
        tail = next(i for i, cid in enumerate(reversed(read)) if cid is None)
        tail = min(tail, count - head)
        if tail:
            ids[count - tail:] = read[len(read) - tail:]
    return ids


class ChunkUnreadable(Exception):
    """The chunk's stored bytes do not hold its requests (damaged or missing): the chunk's fault,
    unlike a database error while reading them."""


async def read_chunk(conn, file_id: str, start: int, end: int, count: int) -> list:
    """The request lines of a chunk; ChunkUnreadable, never an empty list, when the bytes are
    missing or damaged."""
    data = await blobs.read_range(conn, file_id, start, end)
    try:
        lines = list(iter_chunk_lines(data))
    except BAD_JSON as exc:
        raise ChunkUnreadable(f"input file {file_id}: bytes {start}-{end} do not decode as the request lines "
                              f"validation accepted ({exc}); the stored file is damaged") from exc
    if len(lines) != count:
        raise ChunkUnreadable(f"input file {file_id}: bytes {start}-{end} hold {len(lines)} requests, "
                              f"expected {count}; the stored file is damaged")
    return lines
