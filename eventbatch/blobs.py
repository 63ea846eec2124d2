"""File bytes in and out, streamed in pieces of 1 MiB (table file_blobs): content, not state,
so not in the log. The views say which file exists; this module only moves its bytes."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import asyncpg

from .sql import Q

PIECE = 1 << 20


class TooLarge(Exception):
    pass


class BlobWriter:
    """Buffers at most one piece in memory and writes full pieces as they fill.

    `conn` is a connection (the pieces join its transaction) or a pool (each piece is a short
    transaction of its own, on a connection borrowed for that insert only, within `slots` when
    given: what an upload does, so that a slow client holds no connection while it sends)."""

    def __init__(self, conn: asyncpg.Connection | asyncpg.Pool, file_id: str, max_bytes: int | None = None,
                 slots: asyncio.Semaphore | None = None):
        self.conn, self.file_id, self.max_bytes, self.slots = conn, file_id, max_bytes, slots
        self.size = 0
        self._buf = bytearray()
        self._piece = 0

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise TooLarge(self.size)
        self._buf += data
        while len(self._buf) >= PIECE:
            await self._flush(bytes(self._buf[:PIECE]))
            del self._buf[:PIECE]

    async def _flush(self, data: bytes) -> None:
        if self.slots is None:
            await self.conn.execute(Q.blob_piece_insert, self.file_id, self._piece, data)
        else:
            async with self.slots:
                await self.conn.execute(Q.blob_piece_insert, self.file_id, self._piece, data)
        self._piece += 1

    async def close(self) -> int:
        if self._buf:
            await self._flush(bytes(self._buf))
            self._buf.clear()
        return self.size


async def iter_pieces(conn: asyncpg.Connection | asyncpg.Pool, file_id: str, start: int = 0,
                      end: int | None = None) -> AsyncIterator[bytes]:
    """The bytes [start, end) of a file, a piece at a time (a few pieces fetched per query)."""
    first = start // PIECE
    last = (end - 1) // PIECE if end is not None else 2**31 - 1
    piece = first
    while piece <= last:
        rows = await conn.fetch(Q.blob_pieces_range, file_id, piece, min(last, piece + 3))
        if not rows:
            return
        for r in rows:
            data: bytes = r[0]
            lo = start - piece * PIECE if piece == first else 0
            hi = end - piece * PIECE if end is not None and piece == last else len(data)
            yield data[max(lo, 0):hi] if (lo > 0 or hi < len(data)) else data
            piece += 1


async def read_range(conn: asyncpg.Connection, file_id: str, start: int, end: int) -> bytes:
    return b"".join([p async for p in iter_pieces(conn, file_id, start, end)])


async def delete_blob(conn: asyncpg.Connection | asyncpg.Pool, file_id: str) -> None:
    await conn.execute(Q.blob_delete, file_id)


async def delete_orphans(conn: asyncpg.Connection | asyncpg.Pool, idle_seconds: float) -> list[str]:
    """Drop the pieces of uploads that never became a file and that nothing added to for
    `idle_seconds`; returns the file ids whose pieces went."""
    return sorted({r[0] for r in await conn.fetch(Q.blob_orphans_delete, idle_seconds)})
