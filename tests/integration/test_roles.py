"""Least privilege (SPEC §14, migrations/004): the role the processes run as reads and appends
to the log and can do nothing that would let it rewrite history — not even by switching the
log's triggers off."""

from __future__ import annotations

import asyncpg
import pytest

from conftest import app_role_url

REFUSED = {
    "disable the triggers": "ALTER TABLE events DISABLE TRIGGER ALL",
    "disable one trigger": "ALTER TABLE events DISABLE TRIGGER events_refuse_update_delete",
    "drop a trigger": "DROP TRIGGER events_refuse_update_delete ON events",
    "replace the trigger function": """CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger
                                       LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$""",
    "skip triggers for the session": "SET session_replication_role = replica",
    "update an event": "UPDATE events SET type = 'forged'",
    "delete events": "DELETE FROM events",
    "truncate the log": "TRUNCATE events",
    "drop the log": "DROP TABLE events",
    "record a migration": "INSERT INTO schema_migrations (name) VALUES ('999_forged.sql')",
    "own a new table": "CREATE TABLE shadow (x int)",
}


@pytest.fixture(scope="module")
def app_url(fresh_db):
    database = fresh_db()
    database.execute("""INSERT INTO events (stream, version, type, data) VALUES ('batch-x', 1, 'probe', '\\x7b7d')""")
    return app_role_url(database.url)


@pytest.mark.parametrize("what", REFUSED)
async def test_the_app_role_is_refused(app_url, what):
    conn = await asyncpg.connect(app_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(REFUSED[what])
        # and the log is as it was
        assert await conn.fetchval("SELECT count(*) FROM events WHERE type = 'probe'") == 1
        assert await conn.fetchval("SELECT count(*) FROM events WHERE type = 'forged'") == 0
    finally:
        await conn.close()


async def test_the_app_role_reads_and_appends(app_url):
    conn = await asyncpg.connect(app_url)
    try:
        assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        tx = conn.transaction()
        await tx.start()
        position = await conn.fetchval(
            "INSERT INTO events (stream, version, type, data) VALUES ('batch-y', 1, 'probe', '\\x7b7d') RETURNING position")
        assert position > 0
        await conn.execute("INSERT INTO work_chunks (batch_id, chunk_no, first_index, count, byte_start, byte_end) "
                           "VALUES ('y', 0, 0, 1, 0, 1)")
        await conn.execute("UPDATE work_chunks SET done = true WHERE batch_id = 'y'")
        await conn.execute("DELETE FROM batch_view WHERE id = 'y'")
        await tx.rollback()
        assert await conn.fetch("SELECT name FROM schema_migrations")   # is anything pending?
    finally:
        await conn.close()
