"""The migration runner: its bookkeeping table is the first migration, so an empty database and
one migrated by the releases whose code made that table both end up with the same schema."""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg

from eventbatch import db

# What the runner of earlier releases ran at every start, before migrations/000 existed.
OLD_BOOKKEEPING = """CREATE TABLE IF NOT EXISTS schema_migrations (
    name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"""
OLD_FILES = ["001_events.sql", "002_views.sql", "003_storage_keys_work.sql"]


@asynccontextmanager
async def empty_database(database_url: str):
    name = "mig_" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(urlsplit(database_url)._replace(path=f"/{name}").geturl())
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def schema_of(conn: asyncpg.Connection) -> list[tuple]:
    return [tuple(r) for r in await conn.fetch(
        """SELECT table_name, column_name, data_type, is_nullable, column_default
           FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2""")]


def test_the_bookkeeping_table_is_the_first_migration():
    names = [f.name for f in db.migration_files()]
    assert names[0] == "000_schema_migrations.sql"
    assert names == sorted(names) and len(set(names)) == len(names)


async def test_an_empty_database_gets_every_migration_in_order(database_url):
    async with empty_database(database_url) as conn:
        every = [f.name for f in db.migration_files()]
        assert await db.pending_migrations(conn) == every
        # looking created nothing
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
        assert await db.migrate(conn) == every
        assert await db.pending_migrations(conn) == []
        assert await db.migrate(conn) == []   # idempotent


async def test_a_database_of_the_old_runner_migrates_cleanly(database_url):
    async with empty_database(database_url) as old, empty_database(database_url) as new:
        await old.execute(OLD_BOOKKEEPING)
        folder = db.migrations_folder()
        for name in OLD_FILES:
            async with old.transaction():
                await old.execute((folder / name).read_text())
                await old.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
        pending = await db.pending_migrations(old)
        assert pending[0] == "000_schema_migrations.sql" and not set(pending) & set(OLD_FILES)
        assert await db.migrate(old) == pending
        await db.migrate(new)
        assert await schema_of(old) == await schema_of(new)
        assert {r["name"] for r in await old.fetch("SELECT name FROM schema_migrations")} == \
            {f.name for f in db.migration_files()}
