"""API keys: a key belongs to one project (the tenant) and is stored only as its SHA-256."""

from __future__ import annotations

import asyncpg

from . import db, ids
from .config import Settings, SettingsError
from .sql import Q


async def create_key(conn: asyncpg.Connection, project: str) -> str:
    key = ids.api_key()
    await conn.execute(Q.key_insert, ids.key_hash(key), project)
    return key


async def project_for_key(conn, key: str) -> str | None:
    return await conn.fetchval(Q.key_project, ids.key_hash(key))


async def create_key_command(settings: Settings, project: str) -> int:
    if not project.strip():
        raise SettingsError("--project must not be empty; name the project (tenant) the key belongs to.")
    pool = await db.open_database(settings, max_size=1)
    try:
        async with pool.acquire() as conn:
            key = await create_key(conn, project)
    finally:
        await pool.close()
    print(f"Created an API key for project '{project}'. It is shown once; store it now:")
    print(key)
    return 0
