"""Postgres: the URL (embedded.py when none is set), the connection pool and the migration runner."""

from __future__ import annotations

import asyncio
import re
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

import asyncpg

from . import embedded
from .config import Settings, SettingsError, mask_url
from .sql import Q

_MIGRATION_NAME = re.compile(r"^[0-9]{3}_.+\.sql$")


def database_url(settings: Settings) -> str:
    return settings.database_url or embedded.database_url(settings.data_dir)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset on release: eventbatch sets no session state (its advisory locks are
    transaction-scoped, LISTEN lives on a connection the worker keeps). asyncpg's default reset
    costs a round trip per release, about 5% of a drain's CPU."""


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, reset=_keep_session,
                                         command_timeout=300, server_settings={"application_name": "eventbatch"})
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError,
            OverflowError) as exc:
        # ValueError, OverflowError: what asyncpg raises on a URL config.check_database_url let through.
        raise SettingsError(f"cannot connect to the database at {mask_url(url)} ({type(exc).__name__}: "
                            f"{mask_url(str(exc))}); check EVENTBATCH_DATABASE_URL or unset it to use the "
                            "embedded Postgres.") from None


def migrations_folder() -> Traversable:
    """The numbered SQL files. In a source checkout, migrations/ beside the package; installed,
    the package eventbatch.migrations that the wheel carries (pyproject.toml maps the folder to
    it). The checkout's own folder comes first: an editable install elsewhere on the path may
    map eventbatch.migrations to another checkout's folder."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "migrations").is_dir():
        return checkout / "migrations"
    return resources.files("eventbatch.migrations")


def migration_files() -> list[Traversable]:
    """In the order they apply; each has .name and .read_text()."""
    return sorted((f for f in migrations_folder().iterdir() if _MIGRATION_NAME.match(f.name)),
                  key=lambda f: f.name)


async def _applied(conn: asyncpg.Connection) -> set[str]:
    # Read, never created here: migrations/000 makes the table (a role without CREATE can ask).
    if not await conn.fetchval(Q.migration_table_exists):
        return set()
    return {r["name"] for r in await conn.fetch(Q.migration_applied)}


async def migrate(conn: asyncpg.Connection, *, progress=None) -> list[str]:
    """Apply pending migrations, each in its own transaction with its bookkeeping row."""
    await conn.execute(Q.migration_lock)
    try:
        done = await _applied(conn)
        applied = []
        for path in migration_files():
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text(encoding="utf-8"))
                await conn.execute(Q.migration_record, path.name)
            applied.append(path.name)
            if progress:
                progress(path.name)
        return applied
    finally:
        await conn.execute(Q.migration_unlock)


async def pending_migrations(conn: asyncpg.Connection) -> list[str]:
    done = await _applied(conn)
    return [p.name for p in migration_files() if p.name not in done]


async def ensure_migrated(conn: asyncpg.Connection) -> None:
    """At the start of every command but `migrate`: a look at what is pending, and the
    migrations applied only when something is (a migrated database sees no lock, no DDL)."""
    if await pending_migrations(conn):
        await migrate(conn)


async def open_database(settings: Settings, *, max_size: int = 10) -> asyncpg.Pool:
    """URL (embedded server if none), migrations, pool: what every command does at start."""
    url = await asyncio.to_thread(database_url, settings)
    pool = await create_pool(url, min_size=1, max_size=max_size)
    async with pool.acquire() as conn:
        await ensure_migrated(conn)
    return pool


async def migrate_command(settings: Settings) -> int:
    """`eventbatch migrate`."""
    url = await asyncio.to_thread(database_url, settings)
    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            applied = await migrate(conn, progress=lambda name: print(f"applied {name}", flush=True))
    finally:
        await pool.close()
    print(f"{len(applied)} migration(s) applied; the database is up to date.")
    return 0
