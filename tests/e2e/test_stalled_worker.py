"""A stalled worker holds no one (SPEC §11): a worker paused (SIGSTOP) inside its flush, holding
the batch's view row lock, blocks the other worker for seconds only (the pools' idle-in-
transaction timeout ends its session and frees the lock), not for as long as it stays paused."""

from __future__ import annotations

import io
import random
import signal
import time

import openai
import pytest

from conftest import UPSTREAM_KEY, chat_line, jsonl, start_mock, start_server, wait_status
from invariants import assert_invariants

PAUSE_AT_MOST = 25.0     # the paused worker is woken after this, whatever happens


@pytest.fixture()
def iso(fresh_db):
    return fresh_db()


def _idle_timeout() -> float:
    """The worker pools' idle_in_transaction_session_timeout, in seconds (what the test expects
    the other worker to be blocked for, at most)."""
    try:
        from eventbatch.pool import PROFILES
    except ImportError:
        return 10.0
    return float(PROFILES["worker"]["idle_in_transaction_session_timeout"].rstrip("s"))


def _recorded(db, batch_id: str) -> int:
    return db.fetchval("SELECT count(*) FROM events WHERE batch_id = $1 AND request_index IS NOT NULL", batch_id)


def _stalled_holder(db) -> int | None:
    """The backend of a transaction that has written (holds row locks), sits idle for more than
    a moment, and blocks another backend: the paused worker's flush."""
    return db.fetchval(
        "SELECT a.pid FROM pg_stat_activity a WHERE a.datname = current_database() "
        "AND a.state = 'idle in transaction' AND a.backend_xid IS NOT NULL "
        "AND a.state_change < now() - interval '300 milliseconds' "
        "AND EXISTS (SELECT 1 FROM pg_stat_activity b WHERE a.pid = ANY (pg_blocking_pids(b.pid))) LIMIT 1")


def test_a_worker_paused_inside_its_flush_blocks_the_other_for_seconds_only(start_proc, new_key, iso):
    idle = _idle_timeout()
    assert idle + 5 < PAUSE_AT_MOST
    mock = start_mock(start_proc, "--latency-ms", "20")
    common = dict(EVENTBATCH_UPSTREAM_URL=mock.base_url, EVENTBATCH_UPSTREAM_API_KEY=UPSTREAM_KEY,
                  EVENTBATCH_UPSTREAM_CONCURRENCY="16", EVENTBATCH_CHUNK_SIZE="50")
    api = start_server(start_proc, mock.base_url, role="api", db_url=iso.url)
    client = openai.OpenAI(base_url=api.base_url, api_key=new_key(db_url=iso.url), max_retries=0)
    first = start_proc("worker", db_url=iso.url, **common)
    start_proc("worker", db_url=iso.url, **common)
    lines = [chat_line(i) for i in range(20_000)]   # far more than both record while the test runs
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while _recorded(iso, b.id) < 500:
        time.sleep(0.1)

    # Pause the first worker at random moments until one finds it inside a flush that holds the
    # batch's lock while the other worker waits for it.
    caught = None
    try:
        for _ in range(300):
            first.p.send_signal(signal.SIGSTOP)
            time.sleep(0.4)
            caught = _stalled_holder(iso)
            if caught is not None:
                break
            first.p.send_signal(signal.SIGCONT)
            time.sleep(random.uniform(0.0, 0.05))
        assert caught is not None, "never caught the worker inside a flush"
        stalled_at = time.time() - 0.4
        before = _recorded(iso, b.id)
        resumed_at = None
        while time.time() < stalled_at + PAUSE_AT_MOST:
            if _recorded(iso, b.id) > before + 50:
                resumed_at = time.time()
                break
            time.sleep(0.1)
    finally:
        first.p.send_signal(signal.SIGCONT)
    assert resumed_at is not None, f"the other worker recorded nothing for {PAUSE_AT_MOST} s"
    blocked = resumed_at - stalled_at
    print(f"other worker blocked {blocked:.1f} s by a worker paused in its flush (idle timeout {idle:g} s)")
    assert blocked <= idle + 5, blocked
    # The woken worker finds its session gone, retries its flush, and the batch completes whole.
    client.batches.cancel(b.id)
    wait_status(client, b.id, {"cancelled"}, timeout=60)
    out, err = assert_invariants(client, iso, b.id, [x["custom_id"] for x in lines])
    assert len(out) > before
