"""A batch gets its whole window (SPEC §7, §11): outages and 429 bursts of the provider fail
nothing, a request the provider always refuses ends after its attempts, a provider that is down
does not slow the batches bound for another, a request waiting for a retry is parked in the
database (no lease held, its attempts kept across workers), and a chunk whose lines cannot be
read ends. Real processes over loopback against `eventbatch mock-upstream`."""

from __future__ import annotations

import io
import json
import signal
import time
import urllib.request

import openai
import pytest

from conftest import UPSTREAM_KEY, chat_line, jsonl, mock_configure, mock_stats, start_mock, start_server, wait_status
from eventbatch import events as ev
from invariants import assert_invariants


@pytest.fixture()
def iso(fresh_db):
    return fresh_db()


def make_client(proc, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=proc.base_url, api_key=key, max_retries=0, timeout=60)


def run_batch(client, lines):
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def wait_completed(client, batch_id: str, at_least: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while client.batches.retrieve(batch_id).request_counts.completed < at_least:
        assert time.time() < deadline, f"fewer than {at_least} completed after {timeout}s"
        time.sleep(0.05)


def metrics(proc) -> dict[str, float]:
    with urllib.request.urlopen(proc.base_url.removesuffix("/v1") + "/metrics") as r:
        text = r.read().decode()
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))}


def outcome_events(db, batch_id: str, kind: str) -> list[dict]:
    return [json.loads(ev.plain(bytes(r["data"]))) for r in
            db.fetch("SELECT data FROM events WHERE batch_id = $1 AND type = $2", batch_id, kind)]


def test_a_refused_connection_outage_mid_batch_fails_nothing(start_proc, new_key, iso):
    """Far longer than the ~6 s of retries a request had before: 30 s of refused connections."""
    mock = start_mock(start_proc, "--latency-ms", "20", "--api-key", UPSTREAM_KEY)
    srv = start_server(start_proc, mock.base_url, EVENTBATCH_UPSTREAM_CONCURRENCY="16", db_url=iso.url)
    client = make_client(srv, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(2000)]
    b = run_batch(client, lines)
    wait_completed(client, b.id, 300)
    mock_configure(mock, outage_seconds=30)
    ends = time.time() + 30
    time.sleep(10)
    paused_then = metrics(srv).get('eventbatch_provider_paused{provider="default"}')
    during = client.batches.retrieve(b.id)
    assert during.status == "in_progress" and during.request_counts.failed == 0
    done = wait_status(client, b.id, {"completed", "failed", "expired"}, timeout=90)
    recovered_in = time.time() - ends
    assert done.status == "completed" and done.request_counts.failed == 0 and done.request_counts.completed == 2000
    assert recovered_in < 30
    # paused while it refused connections (its state on /metrics), resumed since
    assert paused_then == 1 and metrics(srv)['eventbatch_provider_paused{provider="default"}'] == 0
    out, err = assert_invariants(client, iso, b.id, [x["custom_id"] for x in lines])
    assert len(out) == 2000 and err == []
    assert mock_stats(mock)["duplicate_successes"] == 0
    # some requests met the outage: their refused attempts are in the log, and none counted to failing
    tried = [e["attempts"] for e in outcome_events(iso, b.id, "request_succeeded") if len(e["attempts"]) > 1]
    assert tried and all("upstream_unreachable" in (a.get("error") or "") for t in tried for a in t[:-1])


def test_a_429_burst_with_retry_after_fails_nothing_and_no_retry_comes_early(start_proc, new_key, iso):
    """20 s of 429 with Retry-After: 2, and EVENTBATCH_MAX_ATTEMPTS=2: a 429 spends no attempt."""
    mock = start_mock(start_proc, "--latency-ms", "20", "--retry-after", "2")
    srv = start_server(start_proc, mock.base_url, EVENTBATCH_MAX_ATTEMPTS="2", db_url=iso.url)
    client = make_client(srv, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(1000)]
    b = run_batch(client, lines)
    wait_completed(client, b.id, 150)
    since = time.time()
    mock_configure(mock, rate_limit_seconds=20)
    done = wait_status(client, b.id, {"completed", "failed", "expired"}, timeout=60)
    assert done.status == "completed" and done.request_counts.failed == 0 and done.request_counts.completed == 1000
    with urllib.request.urlopen(f"{mock.control_root}/_mock/attempts?since={since - 1}") as r:
        attempts = json.loads(r.read())
    assert attempts["early_retries"] == 0
    rate_limited = sum(a["status"] == 429 for d in attempts["data"] for a in d["attempts"])
    assert rate_limited > 0
    # the concurrency was cut while the provider said no, and its current figure is published
    assert 1 <= metrics(srv)['eventbatch_provider_concurrency{provider="default"}'] <= 64
    tried = [e["attempts"] for e in outcome_events(iso, b.id, "request_succeeded")]
    assert max(sum(a.get("status_code") == 429 for a in t) for t in tried) >= 1


def test_a_request_always_answered_500_ends_after_its_attempts_and_the_batch_completes(start_proc, new_key, iso):
    mock = start_mock(start_proc, "--latency-ms", "5")
    srv = start_server(start_proc, mock.base_url, EVENTBATCH_MAX_ATTEMPTS="4", EVENTBATCH_RETRY_BASE_SECONDS="0.1",
                       EVENTBATCH_RETRY_MAX_SECONDS="0.5", db_url=iso.url)
    client = make_client(srv, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(300)] + [chat_line(300, mock={"status": 500})]
    b = run_batch(client, lines)
    done = wait_status(client, b.id, {"completed"}, timeout=30)
    assert done.request_counts.completed == 300 and done.request_counts.failed == 1
    out, err = assert_invariants(client, iso, b.id, [x["custom_id"] for x in lines])
    [e] = err
    assert e["custom_id"] == "req-300" and e["response"]["status_code"] == 500     # its last answer
    [failed] = outcome_events(iso, b.id, "request_failed")
    assert [a["status_code"] for a in failed["attempts"]] == [500, 500, 500, 500]
    assert metrics(srv)['eventbatch_provider_paused{provider="default"}'] == 0   # one request failing is not an outage


def test_one_provider_down_does_not_slow_a_batch_bound_for_another(start_proc, new_key, iso, tmp_path):
    down = start_mock(start_proc, "--latency-ms", "20", "--outage-seconds", "600")
    up = start_mock(start_proc, "--latency-ms", "20")
    cfg = tmp_path / "providers.toml"
    cfg.write_text(f'''
[[providers]]
name = "down"
base_url = "{down.base_url}"
models = ["model-down"]

[[providers]]
name = "up"
base_url = "{up.base_url}"
models = ["model-up"]
''')
    srv = start_server(start_proc, up.base_url, EVENTBATCH_CONFIG=str(cfg), EVENTBATCH_UPSTREAM_URL="", db_url=iso.url)
    client = make_client(srv, new_key(db_url=iso.url))
    first = run_batch(client, [chat_line(i, model="model-down") for i in range(2000)])
    time.sleep(2)      # its requests meet the outage first
    t0 = time.time()
    second = run_batch(client, [chat_line(i, model="model-up") for i in range(200)])
    assert wait_status(client, second.id, {"completed"}, timeout=30).request_counts.completed == 200
    assert time.time() - t0 < 10
    stuck = client.batches.retrieve(first.id)
    assert stuck.status == "in_progress" and stuck.request_counts.failed == 0 and stuck.request_counts.completed == 0
    values = metrics(srv)
    assert values['eventbatch_provider_paused{provider="down"}'] == 1
    assert values['eventbatch_provider_paused{provider="up"}'] == 0
    mock_configure(down, outage_seconds=0)      # back: the first batch completes, nothing failed
    done = wait_status(client, first.id, {"completed", "failed"}, timeout=60)
    assert done.status == "completed" and done.request_counts.completed == 2000


def test_a_request_waiting_for_its_retry_holds_no_lease_and_keeps_its_attempts_across_workers(start_proc, new_key,
                                                                                               iso):
    mock = start_mock(start_proc, "--api-key", UPSTREAM_KEY)
    common = dict(EVENTBATCH_UPSTREAM_URL=mock.base_url, EVENTBATCH_UPSTREAM_API_KEY=UPSTREAM_KEY,
                  EVENTBATCH_RETRY_BASE_SECONDS="12", EVENTBATCH_RETRY_MAX_SECONDS="12", EVENTBATCH_LEASE_SECONDS="2")
    api = start_server(start_proc, mock.base_url, role="api", db_url=iso.url)
    client = make_client(api, new_key(db_url=iso.url))
    first = start_proc("worker", db_url=iso.url, **common)
    lines = [chat_line(i) for i in range(20)] + [chat_line(20, mock={"status": 503, "times": 1})]
    b = run_batch(client, lines)
    deadline = time.time() + 30
    while not iso.fetchval("SELECT count(*) FROM request_retries WHERE batch_id = $1", b.id):
        assert time.time() < deadline, "the failed request was never parked"
        time.sleep(0.05)
    # waiting 6-12 s for its retry: saved with its attempt, its chunk given back, nothing leased
    row = iso.fetch("SELECT request_index, counted, next_attempt_at > now() AS later FROM request_retries "
                    "WHERE batch_id = $1", b.id)[0]
    assert row["request_index"] == 20 and row["counted"] == 1 and row["later"]
    assert iso.fetchval("SELECT count(*) FROM work_chunks WHERE batch_id = $1 AND lease_owner IS NOT NULL", b.id) == 0
    first.stop(signal.SIGKILL)
    start_proc("worker", db_url=iso.url, **common)
    done = wait_status(client, b.id, {"completed"}, timeout=40)
    assert done.request_counts.completed == 21
    retried = [e for e in outcome_events(iso, b.id, "request_succeeded") if e["index"] == 20]
    assert [a["status_code"] for a in retried[0]["attempts"]] == [503, 200]   # the first worker's attempt kept
    assert iso.fetchval("SELECT count(*) FROM request_retries WHERE batch_id = $1", b.id) == 0


def test_a_chunk_whose_lines_cannot_be_read_ends_with_failed_requests(start_proc, new_key, iso, mock):
    api = start_server(start_proc, mock.base_url, role="api", EVENTBATCH_CHUNK_SIZE="50", db_url=iso.url)
    client = make_client(api, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(100)]
    b = run_batch(client, lines)
    wait_status(client, b.id, {"in_progress"})       # validated by the api; no worker runs yet
    chunk = iso.fetch("SELECT byte_start FROM work_chunks WHERE batch_id = $1 AND chunk_no = 1", b.id)[0]
    file_id = client.batches.retrieve(b.id).input_file_id
    # damage the first line of the second chunk where it is stored
    iso.execute("UPDATE file_blobs SET data = overlay(data placing '\\x2a2a2a2a'::bytea from $2 + 1) "
                "WHERE file_id = $1 AND piece = 0", file_id, chunk["byte_start"])
    worker = start_proc("worker", db_url=iso.url, EVENTBATCH_UPSTREAM_URL=mock.base_url,
                        EVENTBATCH_UPSTREAM_API_KEY=UPSTREAM_KEY)
    done = wait_status(client, b.id, {"completed"}, timeout=40)
    assert done.request_counts.completed == 50 and done.request_counts.failed == 50
    # the damaged line's custom_id cannot be read: "" stands for it; the rest of its chunk is named
    out, err = assert_invariants(client, iso, b.id, [f"req-{i}" for i in range(100) if i != 50] + [""])
    assert {e["error"]["code"] for e in err} == {"input_unreadable"}
    assert sorted(e["custom_id"] for e in err) == sorted([""] + [f"req-{i}" for i in range(51, 100)])
    assert "Upload the file again" in err[0]["error"]["message"]
    assert worker.log().count('"chunk_unreadable"') == 3      # tried a bounded number of times, then ended


def test_a_cancel_while_a_request_waits_for_its_retry_ends_at_once_with_its_attempts(start_proc, new_key, iso):
    mock = start_mock(start_proc)
    srv = start_server(start_proc, mock.base_url, EVENTBATCH_RETRY_BASE_SECONDS="60", EVENTBATCH_RETRY_MAX_SECONDS="60",
                       db_url=iso.url)
    client = make_client(srv, new_key(db_url=iso.url))
    b = run_batch(client, [chat_line(i) for i in range(10)] + [chat_line(10, mock={"status": 503})])
    deadline = time.time() + 30
    while not iso.fetchval("SELECT count(*) FROM request_retries WHERE batch_id = $1", b.id):
        assert time.time() < deadline, "the failed request was never parked"
        time.sleep(0.05)
    t0 = time.time()
    client.batches.cancel(b.id)
    done = wait_status(client, b.id, {"cancelled"}, timeout=20)
    assert time.time() - t0 < 10          # nothing leased: no wait for the retry 30-60 s away
    assert done.request_counts.completed == 10 and done.request_counts.failed == 1
    [cut] = outcome_events(iso, b.id, "request_failed")
    assert cut["error_code"] == "batch_cancelled" and [a["status_code"] for a in cut["attempts"]] == [503]


def test_with_a_short_window_and_default_attempts_a_request_always_answered_500_ends_before_expiry(
        start_proc, new_key, iso):
    """SPEC §7 with the window shortened as tests do (and the default EVENTBATCH_MAX_ATTEMPTS): the
    backoff fits the window, so the request ends with its last 500 long before expiry instead of
    keeping its batch open until it expires (Backoff.for_window)."""
    mock = start_mock(start_proc, "--latency-ms", "5")
    srv = start_server(start_proc, mock.base_url, EVENTBATCH_WINDOW_SECONDS="160", db_url=iso.url)
    client = make_client(srv, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(50)] + [chat_line(50, mock={"status": 500})]
    t0 = time.time()
    b = run_batch(client, lines)
    done = wait_status(client, b.id, {"completed", "expired"}, timeout=100)
    assert done.status == "completed" and time.time() - t0 < 100, done.status
    out, err = assert_invariants(client, iso, b.id, [x["custom_id"] for x in lines])
    [e] = err
    assert e["custom_id"] == "req-50" and e["response"]["status_code"] == 500     # its last answer
    [failed] = outcome_events(iso, b.id, "request_failed")
    assert [a["status_code"] for a in failed["attempts"]] == [500] * 10              # the default attempts
