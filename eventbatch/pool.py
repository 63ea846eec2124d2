"""Connection pools with timeouts: nothing stalled holds the database, and a database that is
down or stalled holds no API call for long (SPEC §11).

Two kinds of limit:

- On the server, per pool (PROFILES): statement_timeout, lock_timeout and
  idle_in_transaction_session_timeout. They free what a stalled *client* holds: a worker paused
  inside a transaction loses its session (and its locks) after a few seconds of idleness,
  instead of blocking every other worker for as long as it stays paused.
- In the client, while an API call is served (`bounded_waits`, set by the API's error
  middleware): every wait on the database — a connection from the pool, a statement's answer —
  is cut after API_WAIT_SECONDS. They free the API from a stalled *server*, which enforces
  nothing while it is frozen. A cut connection is terminated, not cancelled politely (a
  CancelRequest to a frozen server would wait as well), and the call answers 503 (api/app.py).

Background work (validation, settling, sweeps: all of the worker, and what the API spawns) is
not bounded in the client: its statements may be long, and it retries by itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from contextlib import contextmanager
from typing import Iterator

import asyncpg
import structlog

# Each wait of an API call: an answer to the client within about 3 s while the database is
# away (one wait for a connection or one for a statement, then the 503).
API_WAIT_SECONDS = 2.0
CONNECT_SECONDS = 10.0

_WAIT_LIMIT: contextvars.ContextVar[float | None] = contextvars.ContextVar("eventbatch_db_wait_limit",
                                                                           default=None)


def _profile(statement: int, lock: int, idle: int) -> dict[str, str]:
    return {"statement_timeout": f"{statement}s" if statement else "0", "lock_timeout": f"{lock}s" if lock else "0",
            "idle_in_transaction_session_timeout": f"{idle}s" if idle else "0"}


# Server-side limits (seconds; 0 is none) per kind of pool.
#
# worker (and serve's worker thread): every statement is short by design — a 4 MiB read of a
# file's pieces while validating 200 MB, a flush of at most 1,000 outcomes, a page of a
# finalize's cursor — so a minute is far beyond the slowest; a lock is awaited at most half a
# minute (a big finalize holds its batch that long at worst); and 5 s idle inside a transaction
# means a worker paused holding a batch's lock blocks the others for seconds only (a worker's
# transactions last milliseconds between statements; the largest gap, one 4 MiB piece through
# the validator, is tens of milliseconds). Nothing in a
# worker's transaction waits on anything but this database.
#
# api: the same statement and lock limits (the API process also validates and settles, in the
# background); its requests are bounded in the client instead (API_WAIT_SECONDS). Idle in a
# transaction for longer, as a margin: uploads write each piece in a short transaction of its own
# and claim their Idempotency-Key only when the file is recorded, but a request-wide transaction
# of a keyed request still spans the handler's awaits (api_profile keeps the margin above the
# upload read timeout).
#
# operator (migrate, projections rebuild, replay, keys): no statement limit — a migration may
# build an index over the whole log, a rebuild folds all of it — but a lock is awaited 30 s at
# most: a migration queued behind a long transaction for a lock on `events` would stall every
# append queued behind it; failing is better (it changes nothing; run it again).
PROFILES: dict[str, dict[str, str]] = {
    "worker": _profile(statement=60, lock=30, idle=5),
    "api": _profile(statement=60, lock=30, idle=60),
    "operator": _profile(statement=0, lock=30, idle=60),
}
# A backstop in the client for background work, above the server's statement limit (so the
# server's clearer error comes first) for when the server is frozen and enforces nothing.
COMMAND_SECONDS = {"worker": 90.0, "api": 90.0, "operator": None}


def api_profile(upload_read_timeout: float) -> dict[str, str]:
    profile = dict(PROFILES["api"])
    profile["idle_in_transaction_session_timeout"] = f"{max(60, int(upload_read_timeout) + 30)}s"
    return profile


class DatabaseUnavailable(ConnectionError):
    """The database did not answer: down, unreachable, or stalled past a wait's limit. An
    OSError, so that code catching connection failures (OSError) catches it too."""


class DatabaseStalled(DatabaseUnavailable, TimeoutError):
    pass


@contextmanager
def bounded_waits(seconds: float | None = API_WAIT_SECONDS) -> Iterator[None]:
    """Every wait on the database inside the block is cut after `seconds` (None: unbounded)."""
    token = _WAIT_LIMIT.set(seconds)
    try:
        yield
    finally:
        _WAIT_LIMIT.reset(token)


def background_context() -> contextvars.Context:
    """A context for work that outlives the API call that starts it: unbounded again."""
    context = contextvars.copy_context()
    context.run(_WAIT_LIMIT.set, None)
    return context


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database is away or overloaded, not that the request was wrong:
    such a call is a 503 with Retry-After, never a 500."""
    if isinstance(exc, (DatabaseUnavailable, TimeoutError, asyncpg.PostgresConnectionError,
                        asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
                        asyncpg.TooManyConnectionsError, asyncpg.QueryCanceledError, asyncpg.LockNotAvailableError,
                        asyncpg.IdleInTransactionSessionTimeoutError)):
        return True
    # asyncpg's words for a connection that went away under it
    return isinstance(exc, asyncpg.InterfaceError) and ("closed" in str(exc) or "pool is closing" in str(exc))


class Connection(asyncpg.Connection):
    """A connection whose statements honour bounded_waits."""

    async def _bounded(self, call):
        limit = _WAIT_LIMIT.get()
        if limit is None:
            return await call
        try:
            async with asyncio.timeout(limit):
                return await call
        except TimeoutError:
            self.terminate()   # the pool replaces it; a polite cancel would wait on the server too
            raise DatabaseStalled(f"the database did not answer within {limit:g} s") from None

    async def execute(self, query, *args, timeout=None):
        return await self._bounded(super().execute(query, *args, timeout=timeout))

    async def executemany(self, command, args, *, timeout=None):
        return await self._bounded(super().executemany(command, args, timeout=timeout))

    async def fetch(self, query, *args, timeout=None, record_class=None):
        return await self._bounded(super().fetch(query, *args, timeout=timeout, record_class=record_class))

    async def fetchval(self, query, *args, column=0, timeout=None):
        return await self._bounded(super().fetchval(query, *args, column=column, timeout=timeout))

    async def fetchrow(self, query, *args, timeout=None, record_class=None):
        return await self._bounded(super().fetchrow(query, *args, timeout=timeout, record_class=record_class))

    async def fetchmany(self, query, args, *, timeout=None, record_class=None):
        return await self._bounded(super().fetchmany(query, args, timeout=timeout, record_class=record_class))

    async def copy_records_to_table(self, table_name, **kwargs):
        return await self._bounded(super().copy_records_to_table(table_name, **kwargs))

    def cursor(self, query, *args, prefetch=None, timeout=None, record_class=None):
        # A cursor's fetches cannot be wrapped one by one: asyncpg's own timeout bounds each.
        limit = _WAIT_LIMIT.get()
        return super().cursor(query, *args, prefetch=prefetch, timeout=timeout if timeout is not None else limit,
                              record_class=record_class)


class Pool(asyncpg.Pool):
    """A pool whose acquire honours bounded_waits (and then also bounds its release)."""

    def acquire(self, *, timeout=None):
        limit = _WAIT_LIMIT.get()
        if limit is not None and (timeout is None or timeout > limit):
            timeout = limit
        return _Acquire(self, timeout)

    async def _acquire_bounded(self, timeout):
        # Unbounded too (the pool's own fetch/execute, background work): a refused connect is
        # DatabaseUnavailable everywhere, so pool.unavailable tells an outage from a bug.
        try:
            if timeout is None:
                return await asyncpg.Pool.acquire(self)
            async with asyncio.timeout(timeout):
                return await asyncpg.Pool.acquire(self, timeout=timeout)
        except TimeoutError:     # before OSError, of which it is one
            within = "in time" if timeout is None else f"within {timeout:g} s"
            raise DatabaseStalled(f"no database connection {within}") from None
        except OSError as exc:   # connecting anew: refused, no such socket, reset
            raise DatabaseUnavailable(f"the database cannot be reached ({type(exc).__name__})") from exc


class _Acquire:
    """`async with pool.acquire() as conn` and `conn = await pool.acquire()`, as asyncpg's."""

    __slots__ = ("pool", "timeout", "conn")

    def __init__(self, pool: Pool, timeout: float | None):
        self.pool, self.timeout, self.conn = pool, timeout, None

    async def __aenter__(self):
        self.conn = await self.pool._acquire_bounded(self.timeout)
        return self.conn

    async def __aexit__(self, *exc_info):
        conn, self.conn = self.conn, None
        await self.pool.release(conn)

    def __await__(self):
        return self.pool._acquire_bounded(self.timeout).__await__()


class _PoolLog(logging.Handler):
    """asyncpg's pool logs its reconnection attempts with a traceback each, through the standard
    logging module, which prints them as raw text: in an outage, pages of it between the JSON
    lines. One structured line each instead, with what failed."""

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        structlog.get_logger("eventbatch").warning("database_pool_reconnecting", detail=record.getMessage(),
                                                   error=type(error).__name__ if error else None)


def _route_pool_log() -> None:
    logger = logging.getLogger("asyncpg.pool")
    if not any(isinstance(h, _PoolLog) for h in logger.handlers):
        logger.addHandler(_PoolLog())
        logger.propagate = False


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset on release: eventbatch sets no session state (its advisory locks are
    transaction-scoped, LISTEN lives on a connection the worker keeps). asyncpg's default reset
    costs a round trip per release, about 5% of a drain's CPU."""


async def open_pool(url: str, *, kind: str = "worker", min_size: int = 2, max_size: int = 10,
                    server_settings: dict[str, str] | None = None, init=None) -> Pool:
    """A pool of `kind` (PROFILES); connection failures raise as asyncpg raises them."""
    _route_pool_log()
    settings = {"application_name": "eventbatch", **PROFILES[kind], **(server_settings or {})}
    pool = Pool(url, min_size=min_size, max_size=max_size, max_queries=50000, max_inactive_connection_lifetime=300.0,
                connect=None, setup=None, init=init, reset=_keep_session, loop=None, connection_class=Connection,
                record_class=asyncpg.Record, command_timeout=COMMAND_SECONDS[kind], timeout=CONNECT_SECONDS,
                server_settings=settings)
    await pool
    return pool
