"""/healthz and /readyz: unauthenticated, tenant-free probes. Ready means the database answers
and holds every migration this release knows; a fresh database, and one that went away, are
not ready."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from eventbatch import db
from eventbatch.api.app import create_app
from eventbatch.config import load_settings


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_probes_answer_without_a_key(server):
    root = server.base_url.removesuffix("/v1")
    assert get(root + "/healthz") == (200, {"status": "ok"})
    assert get(root + "/readyz") == (200, {"status": "ready"})
    # the API itself still wants a key
    assert get(server.base_url + "/batches")[0] == 401


async def test_readyz_follows_migrations_and_the_database(database_url):
    name = f"readyz_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    fresh_url = urlsplit(database_url)._replace(path=f"/{name}").geturl()
    pool = await asyncpg.create_pool(fresh_url, min_size=1, max_size=2)
    try:
        async with TestClient(TestServer(create_app(load_settings({}), pool))) as http:
            async def probe(path: str) -> tuple[int, dict]:
                async with http.get(path) as r:
                    return r.status, await r.json()

            # an empty database: every migration pending
            status, body = await probe("/readyz")
            assert status == 503 and body["error"]["code"] == "migrations_pending"
            assert body["error"]["type"] == "server_error"
            for f in db.migration_files():
                assert f.name in body["error"]["message"]
            assert await probe("/healthz") == (200, {"status": "ok"})

            async with pool.acquire() as conn:
                assert await db.pending_migrations(conn) == [f.name for f in db.migration_files()]
                await db.migrate(conn)
                assert await db.pending_migrations(conn) == []
            assert await probe("/readyz") == (200, {"status": "ready"})

            # the database goes away: not ready, but alive (a restart would not help)
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            status, body = await probe("/readyz")
            assert status == 503 and body["error"]["code"] == "database_unavailable"
            assert name not in body["error"]["message"] and "postgres" not in body["error"]["message"]
            assert await probe("/healthz") == (200, {"status": "ok"})
    finally:
        pool.terminate()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
