"""Migration 042 turns api_keys into a projection of the log: keys made before it get their
api_key_created event, keep working, and the rebuilt view equals the migrated one."""

from __future__ import annotations

from eventbatch import api_keys, db, ids, rebuild

from test_migrations import empty_database

BEFORE = "042_api_keys_from_the_log.sql"


async def test_keys_made_before_the_log_knew_keys_survive_the_migration(database_url):
    async with empty_database(database_url) as conn:
        folder = db.migrations_folder()
        for path in db.migration_files():
            if path.name >= BEFORE:
                break
            async with conn.transaction():
                await conn.execute((folder / path.name).read_text())
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
        old_key = ids.api_key()
        await conn.execute("INSERT INTO api_keys (key_hash, project) VALUES ($1, 'old-project')", ids.key_hash(old_key))
        await db.migrate(conn)

        found = await api_keys.authenticate(conn, old_key)
        assert found is not None and found[1] == "old-project"
        key_id = found[0]
        rows = await conn.fetch("SELECT stream, version, type, data FROM events")
        assert [(r["stream"], r["version"], r["type"]) for r in rows] == [(f"key-{key_id}", 1, "api_key_created")]
        assert ids.key_hash(old_key).encode() not in rows[0]["data"]
        folded, diffs = await rebuild.verify(conn)
        assert diffs == [] and folded.rows["key"] == 1
        # a new key and a revocation on the migrated database
        new_key = await api_keys.create_key(conn, "new-project")
        await api_keys.revoke_key(conn, key_id)
        assert await api_keys.authenticate(conn, old_key) is None
        assert (await api_keys.authenticate(conn, new_key))[1] == "new-project"
        assert (await rebuild.verify(conn))[1] == []
        assert await conn.fetchval("SELECT to_regclass('api_keys_before_the_log')") is None


async def test_nothing_to_carry_over_on_an_empty_database(database_url):
    async with empty_database(database_url) as conn:
        await db.migrate(conn)
        assert await conn.fetchval("SELECT count(*) FROM api_keys") == 0
        assert await conn.fetchval("SELECT count(*) FROM events") == 0
