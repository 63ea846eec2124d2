"""The event log: append-only at the database, optimistic concurrency per stream, consistent
under concurrent writers, and views that equal a fresh fold of the log."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time

import asyncpg
import pytest

from conftest import ROOT, base_env, chat_line, jsonl, slow_line, wait_status
from eventbatch import events as ev, store


@pytest.mark.parametrize("sql", [
    "UPDATE events SET type = 'x' WHERE position = (SELECT min(position) FROM events)",
    "DELETE FROM events WHERE position = (SELECT min(position) FROM events)",
    "TRUNCATE events",
])
def test_events_table_refuses_changes(db, client, sql):
    client.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch")
    before = db.fetch("SELECT position, type, data FROM events ORDER BY position")
    with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
        db.execute(sql)
    after = db.fetch("SELECT position, type, data FROM events WHERE position = ANY($1::bigint[]) ORDER BY position",
                     [r["position"] for r in before])
    assert after == before


def test_concurrent_appends_to_one_stream_conflict(database_url):
    async def go():
        c1, c2 = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
        stream = "probe-" + __import__("uuid").uuid4().hex
        e = ev.BatchStarted(at=1.0)
        try:
            t1, t2 = c1.transaction(), c2.transaction()
            await t1.start(), await t2.start()
            await store.append(c1, stream, 0, [e])
            second = asyncio.ensure_future(store.append(c2, stream, 0, [e]))
            await asyncio.sleep(0.2)
            await t1.commit()
            with pytest.raises(store.StreamConflict):
                await second
            await t2.rollback()
            assert [r["version"] for r in await c1.fetch("SELECT version FROM events WHERE stream = $1", stream)] == [1]
        finally:
            await c1.close(), await c2.close()
    asyncio.run(go())


def test_cancel_racing_validation_leaves_a_consistent_log(client, db):
    f = client.files.create(file=("a.jsonl", io.BytesIO(jsonl([slow_line(i) for i in range(3000)]))), purpose="batch")
    ids = []
    for _ in range(8):
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        client.batches.cancel(b.id)
        ids.append(b.id)
    for bid in ids:
        done = wait_status(client, bid, {"cancelled"}, timeout=60)
        rc = done.request_counts
        assert rc.completed + rc.failed == rc.total == 3000
        rows = db.fetch("SELECT type, version, request_index FROM events WHERE batch_id = $1 ORDER BY position", bid)
        batch_level = [r for r in rows if r["request_index"] is None]
        assert [r["version"] for r in batch_level] == list(range(1, len(batch_level) + 1))
        types = [r["type"] for r in batch_level]
        assert types[0] == "batch_created" and types[-1] == "batch_cancelled"
        assert "batch_validation_failed" not in types
        if "batch_started" in types:  # validation won the race: it precedes the cancel
            assert types.index("batch_started") < types.index("batch_cancelling")
        assert types.index("batch_cancelling") < types.index("batch_cancelled")
        outcomes = [r for r in rows if r["request_index"] is not None]
        assert len(outcomes) == rc.total and len({r["request_index"] for r in outcomes}) == rc.total
        # nothing after the terminal event
        assert rows[-1]["type"] == "batch_cancelled"


def test_rebuild_verify_cli_is_clean_then_flags_a_tampered_view(client, db, database_url):
    f = client.files.create(file=("a.jsonl", io.BytesIO(jsonl([slow_line(1)]))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, b.id, {"in_progress"})
    client.batches.cancel(b.id)
    wait_status(client, b.id, {"cancelled"})
    env = base_env(database_url)

    def verify():
        return subprocess.run([sys.executable, "-m", "eventbatch", "projections", "rebuild", "--verify"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    ok = verify()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "no differences" in ok.stdout
    db.execute("UPDATE batch_view SET status = 'completed' WHERE id = $1", b.id)
    bad = verify()
    assert bad.returncode == 1 and b.id in bad.stdout, bad.stdout
    rebuilt = subprocess.run([sys.executable, "-m", "eventbatch", "projections", "rebuild"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert client.batches.retrieve(b.id).status == "cancelled"
    assert verify().returncode == 0


def test_rebuild_while_a_batch_runs(start_proc, new_key, fresh_db):
    """A rebuild done while a worker records outcomes: nothing is lost, finished batches' views
    are byte-identical afterwards, and the running batch's view still equals the log at the end."""
    from conftest import start_mock, start_server
    import openai
    iso = fresh_db()
    # Slow enough that the running batch is still running when the rebuild is done: writers are
    # no longer held for the fold, so a quick batch could finish during it.
    mock = start_mock(start_proc, "--latency-ms", "60")
    srv = start_server(start_proc, mock.base_url, db_url=iso.url, EVENTBATCH_UPSTREAM_CONCURRENCY="16")
    client = openai.OpenAI(base_url=srv.base_url, api_key=new_key(db_url=iso.url), max_retries=0)
    done_batches = []
    for n in range(5):
        f = client.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line(i) for i in range(20)]))),
                                purpose="batch")
        done_batches.append(client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                  completion_window="24h").id)
    for bid in done_batches:
        wait_status(client, bid, {"completed"})
    finished_rows = iso.fetch("SELECT id, project, seq, status, version, doc FROM batch_view ORDER BY id")
    f = client.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line(i) for i in range(2000)]))), purpose="batch")
    running = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while client.batches.retrieve(running.id).request_counts.completed < 100:
        time.sleep(0.05)
    env = base_env(iso.url)
    r = subprocess.run([sys.executable, "-m", "eventbatch", "projections", "rebuild"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "folding events [" in r.stderr and "rebuilt 6 batch view(s)" in r.stdout  # progress shown
    assert client.batches.retrieve(running.id).status == "in_progress"  # it ran through the rebuild
    done = wait_status(client, running.id, {"completed"}, timeout=120)
    assert done.request_counts.completed == 2000
    after = iso.fetch("SELECT id, project, seq, status, version, doc FROM batch_view WHERE id = ANY($1::text[]) "
                      "ORDER BY id", [x["id"] for x in finished_rows])
    assert after == finished_rows
    v = subprocess.run([sys.executable, "-m", "eventbatch", "projections", "rebuild", "--verify"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert v.returncode == 0 and "no differences" in v.stdout, v.stdout
