"""Postgres: the URL (embedded.py when none is set), pools (pool.py: their timeouts), the migration
runner, and what every command does at start."""

from __future__ import annotations

import asyncio
import re
import sys
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import NamedTuple

import asyncpg

from . import embedded, pool
from .config import Settings, SettingsError, mask_url
from .sql import Q

_MIGRATION_NAME = re.compile(r"^[0-9]{3}_.+\.sql$")


class Database(NamedTuple):
    """Which database a command uses, as the person who ran it should hear it."""
    shown: str                      # the embedded folder, or the URL with its password masked
    created: bool = False           # a new, empty embedded Postgres was made just now
    others: tuple[Path, ...] = ()   # data folders of other embedded Postgres servers running now

    def notice(self) -> list[str]:
        """One line naming the database, and a warning when a new embedded one may be the wrong one."""
        lines = [f"database: {self.shown}" + (" (created now)" if self.created else "")]
        if self.created and self.others:
            lines.append(f"warning: {self.beside_another()}")
        return lines

    def beside_another(self) -> str:
        other, shown = self.others[0], ", ".join(str(d) for d in self.others[:3])
        more = f" and {len(self.others) - 3} more" if len(self.others) > 3 else ""
        return (f"this made a new, empty database while an eventbatch server is running on another one "
                f"({shown}{more}): that server does not see what is written here. To use its database, pass "
                f"--data-dir {other} (or run from {other.parent}).")


def embedded_is_new(settings: Settings) -> bool:
    """Asked before the embedded server is started: will starting it make a new database?"""
    return settings.database_url is None and not (settings.data_dir.expanduser().resolve() / "pgdata"
                                                  / "PG_VERSION").exists()


def describe(settings: Settings, created: bool) -> Database:
    """Asked once the database answers (the embedded server running)."""
    if settings.database_url is not None:
        return Database(mask_url(settings.database_url))
    data_dir = settings.data_dir.expanduser().resolve()
    return Database(f"the embedded Postgres in {data_dir}", created,
                    embedded.others_running(data_dir) if created else ())


async def create_pool(url: str, *, kind: str = "worker", min_size: int = 2, max_size: int = 10,
                      server_settings: dict[str, str] | None = None, init=None) -> pool.Pool:
    """A pool with the timeouts of its kind (pool.PROFILES: worker, api, operator); a database
    that cannot be reached at start is one line. `init`: a coroutine run on each new connection
    (the sweeper counts its statements)."""
    try:
        return await pool.open_pool(url, kind=kind, min_size=min_size, max_size=max_size,
                                    server_settings=server_settings, init=init)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError,
            OverflowError) as exc:
        raise _unreachable(url, exc) from None


async def connect(url: str) -> asyncpg.Connection:
    """One connection, for start-up checks and migrations; failures are one line like the pool's."""
    try:
        return await asyncpg.connect(url, timeout=pool.CONNECT_SECONDS,
                                     server_settings={"application_name": "eventbatch", **pool.PROFILES["operator"]})
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError,
            OverflowError) as exc:
        raise _unreachable(url, exc) from None


def _unreachable(url: str, exc: BaseException) -> SettingsError:
    # ValueError, OverflowError: what asyncpg raises on a URL config.check_database_url let through.
    return SettingsError(f"cannot connect to the database at {mask_url(url)} ({type(exc).__name__}: "
                         f"{mask_url(str(exc))}); check EVENTBATCH_DATABASE_URL or unset it to use the "
                         "embedded Postgres.")


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


class MigrationFailed(SettingsError):
    def __init__(self, name: str, exc: asyncpg.PostgresError):
        hint = getattr(exc, "hint", None)
        super().__init__(f"migration {name} failed ({type(exc).__name__}: {exc}{'; ' + hint if hint else ''}); "
                         "it changed nothing (each file is one transaction): fix the cause and run "
                         "'eventbatch migrate' again.")


async def migrate(conn: asyncpg.Connection, *, progress=None) -> list[str]:
    """Apply pending migrations, each in its own transaction with its bookkeeping row."""
    await conn.execute(Q.migration_lock)
    try:
        done = await _applied(conn)
        applied = []
        for path in migration_files():
            if path.name in done:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(path.read_text(encoding="utf-8"))
                    await conn.execute(Q.migration_record, path.name)
            except asyncpg.PostgresError as exc:
                raise MigrationFailed(path.name, exc) from exc
            applied.append(path.name)
            if progress:
                progress(path.name)
        return applied
    finally:
        await conn.execute(Q.migration_unlock)


async def pending_migrations(conn: asyncpg.Connection) -> list[str]:
    done = await _applied(conn)
    return [p.name for p in migration_files() if p.name not in done]


def _pending_line(pending: list[str]) -> str:
    many = "s" if len(pending) != 1 else ""
    return (f"the database has {len(pending)} pending migration{many} ({', '.join(pending)}); run "
            "'eventbatch migrate' as the schema owner (EVENTBATCH_MIGRATION_DATABASE_URL), then start again.")


async def runtime_url(settings: Settings) -> str:
    """The URL serve, api, worker and the operator commands run as, once the schema is current.

    A migrated database is only looked at (which migrations are pending): no lock, no DDL, so a
    role that may only read and write rows (migrations/004, eventbatch_app) starts cleanly. When
    something is pending, it is applied with EVENTBATCH_MIGRATION_DATABASE_URL if set, else by
    this role if it may (it owns the schema: one role for everything, as before); otherwise the
    process refuses to start with one line that says what to do.

    Unset EVENTBATCH_DATABASE_URL: the embedded server, migrated as its superuser (the owner),
    and the processes connect as eventbatch_app (embedded.py)."""
    if settings.database_url is None:
        server = await asyncio.to_thread(embedded.server_for, settings.data_dir)
        owner = await connect(embedded.owner_url(server))
        try:
            if await pending_migrations(owner):
                await migrate(owner)
            await embedded.allow_app_login(owner)
        finally:
            await owner.close()
        return embedded.app_url(server)
    url = settings.database_url
    conn = await connect(url)
    try:
        pending = await pending_migrations(conn)
        if not pending:
            return url
        if settings.migration_database_url is not None:
            owner = await connect(settings.migration_database_url)
            try:
                await migrate(owner)
            finally:
                await owner.close()
        elif await conn.fetchval(Q.migration_may_apply):
            await migrate(conn)
        else:
            raise SettingsError(_pending_line(pending))
    finally:
        await conn.close()
    return url


async def owner_url(settings: Settings) -> str:
    """The schema owner's URL, for `eventbatch migrate` (SPEC §14)."""
    if settings.database_url is None and settings.migration_database_url is None:
        return embedded.owner_url(await asyncio.to_thread(embedded.server_for, settings.data_dir))
    return settings.migration_database_url or settings.database_url


def announce(database: Database) -> None:
    """On stderr, so that what a command prints on stdout (a key, JSON lines) stays clean."""
    for line in database.notice():
        print(f"eventbatch: {line}", file=sys.stderr, flush=True)


async def open_database(settings: Settings, *, max_size: int = 10) -> asyncpg.Pool:
    """URL (embedded server if none), migrations, pool: what every command does at start. The
    command names the database it uses (a key made in the wrong one is a puzzling 401 later)."""
    created = embedded_is_new(settings)
    url = await runtime_url(settings)
    opened = await create_pool(url, kind="operator", min_size=1, max_size=max_size)
    announce(describe(settings, created))
    return opened


async def migrate_command(settings: Settings) -> int:
    """`eventbatch migrate`, as the schema owner."""
    created = embedded_is_new(settings)
    conn = await connect(await owner_url(settings))
    announce(describe(settings, created) if settings.migration_database_url is None
             else Database(mask_url(settings.migration_database_url)))
    try:
        applied = await migrate(conn, progress=lambda name: print(f"applied {name}", flush=True))
        if settings.database_url is None and settings.migration_database_url is None:
            await embedded.allow_app_login(conn)
    finally:
        await conn.close()
    print(f"{len(applied)} migration(s) applied; the database is up to date.")
    return 0
