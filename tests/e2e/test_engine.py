"""The execution engine against the mock upstream: real processes, loopback HTTP."""

from __future__ import annotations

import io
import json
import signal
import time
import urllib.request

import pytest

from conftest import (UPSTREAM_KEY, chat_line, jsonl, mock_stats, start_mock, start_server,
                      wait_status)
from eventbatch import events as ev
from invariants import assert_invariants


def make_client(proc, key):
    import openai
    return openai.OpenAI(base_url=proc.base_url, api_key=key, max_retries=0, timeout=60)


@pytest.fixture()
def iso(fresh_db):
    """A database of this test's own: only this test's workers claim its work."""
    return fresh_db()


def run_batch(client, lines, endpoint="/v1/chat/completions", **kw):
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h", **kw)


def test_2000_requests_complete_with_counts_usage_and_final_400s(client, db, mock):
    lines = [chat_line(i, max_tokens=5 + i % 7) if i % 20 else chat_line(i, mock={"status": 400})
             for i in range(2000)]
    b = run_batch(client, lines)
    done = wait_status(client, b.id, {"completed"}, timeout=120)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
    out, err = assert_invariants(client, db, b.id, [x["custom_id"] for x in lines])
    assert len(out) == 1900 and len(err) == 100
    assert done.request_counts.completed == 1900 and done.request_counts.failed == 100
    # output lines in SPEC §3's shape
    o = out[0]
    assert set(o) == {"id", "custom_id", "response", "error"} and o["error"] is None
    assert o["id"].startswith("batch_req_") and o["response"]["status_code"] == 200
    assert o["response"]["request_id"].startswith("req_") and o["response"]["body"]["object"] == "chat.completion"
    # final 400s kept with the upstream's status and body, attempted once
    for e in err:
        assert e["error"] is None and e["response"]["status_code"] == 400
        assert e["response"]["body"]["error"]["type"] == "invalid_request_error"
    attempts = db.fetch("SELECT data FROM events WHERE batch_id = $1 AND type = 'request_failed'", b.id)
    assert all(len(json.loads(ev.plain(r["data"]))["attempts"]) == 1 for r in attempts)
    # usage is the sum of the successful responses' usage blocks
    u = [x["response"]["body"]["usage"] for x in out]
    assert done.usage.input_tokens == sum(x["prompt_tokens"] for x in u) > 0
    assert done.usage.output_tokens == sum(x["completion_tokens"] for x in u) > 0
    assert done.usage.total_tokens == sum(x["total_tokens"] for x in u)
    # the output file is a batch_output file of the same project
    fo = client.files.retrieve(done.output_file_id)
    assert fo.purpose == "batch_output" and fo.bytes == len(client.files.content(done.output_file_id).read())


def test_progress_is_visible_while_running(start_proc, new_key, iso):
    mock = start_mock(start_proc, "--latency-ms", "100")
    srv = start_server(start_proc, mock.base_url, EVENTBATCH_UPSTREAM_CONCURRENCY="8", db_url=iso.url)
    client = make_client(srv, new_key(db_url=iso.url))
    b = run_batch(client, [chat_line(i) for i in range(400)])  # about 5 s
    seen = []
    deadline = time.time() + 60
    while time.time() < deadline:
        cur = client.batches.retrieve(b.id)
        seen.append((cur.request_counts.completed, cur.usage.total_tokens))
        if cur.status == "completed":
            break
        time.sleep(0.2)
    partial = [c for c, _ in seen if 0 < c < 400]
    assert len(partial) >= 3, seen  # counts rose while it ran, not only at the end
    assert [c for c, _ in seen] == sorted(c for c, _ in seen)
    assert any(0 < t for c, t in seen if 0 < c < 400)  # usage accumulates as results land


def test_30_percent_429_and_5xx_still_complete(start_proc, new_key, iso):
    mock = start_mock(start_proc, "--fail-rate", "0.15", "--rate-limit-rate", "0.15", "--seed", "7")
    srv = start_server(start_proc, mock.base_url, EVENTBATCH_MAX_ATTEMPTS="12", db_url=iso.url)
    client = make_client(srv, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(1000)]
    b = run_batch(client, lines)
    done = wait_status(client, b.id, {"completed"}, timeout=180)
    out, err = assert_invariants(client, iso, b.id, [x["custom_id"] for x in lines])
    assert len(out) == 1000 and err == []
    rows = iso.fetch("SELECT data FROM events WHERE batch_id = $1 AND type = 'request_succeeded'", b.id)
    attempts = [len(json.loads(ev.plain(r["data"]))["attempts"]) for r in rows]
    assert max(attempts) <= 12 and sum(a > 1 for a in attempts) > 100  # retries happened, under the cap
    statuses = {a["status_code"] for r in rows for a in json.loads(ev.plain(r["data"]))["attempts"]}
    assert {429, 200} <= statuses and statuses & {500, 502, 503}
    stats = mock_stats(mock)
    assert stats["duplicate_successes"] == 0  # no request sent again after it succeeded
    assert stats["successes"] == 1000


def test_cancel_mid_run_stops_new_requests_and_keeps_partial_output(start_proc, new_key, iso):
    mock = start_mock(start_proc, "--latency-ms", "100")
    srv = start_server(start_proc, mock.base_url, EVENTBATCH_UPSTREAM_CONCURRENCY="8", db_url=iso.url)
    client = make_client(srv, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(2000)]
    b = run_batch(client, lines)
    while client.batches.retrieve(b.id).request_counts.completed < 40:
        time.sleep(0.1)
    c = client.batches.cancel(b.id)
    cancel_sent = time.time()
    assert c.status == "cancelling"
    done = wait_status(client, b.id, {"cancelled"}, timeout=30)
    assert time.time() - cancel_sent < 10
    out, err = assert_invariants(client, iso, b.id, [x["custom_id"] for x in lines])
    assert len(out) >= 40 and len(err) > 1000
    assert {e["error"]["code"] for e in err} == {"batch_cancelled"}
    # no upstream request started after the cancel was noticed (about a second)
    with urllib.request.urlopen(f"{mock.root}/_mock/requests?since={cancel_sent + 1.0}") as r:
        late = json.loads(r.read())["data"]
    assert late == []
    assert done.cancelling_at <= done.cancelled_at
    # requests cut short keep their attempts in the log (every attempt is recorded)
    cut = [json.loads(ev.plain(r["data"])) for r in iso.fetch(
        "SELECT data FROM events WHERE batch_id = $1 AND type = 'request_failed'", b.id)]
    aborted = [e for e in cut if e.get("attempts") and e["attempts"][-1].get("error") == "aborted"]
    assert aborted and all(e["error_code"] == "batch_cancelled" for e in aborted)
    assert len(aborted) <= 8  # at most the requests that were in flight


def test_expiry_with_a_short_window(start_proc, new_key, iso):
    mock = start_mock(start_proc, "--latency-ms", "100")
    srv = start_server(start_proc, mock.base_url, EVENTBATCH_UPSTREAM_CONCURRENCY="4", EVENTBATCH_WINDOW_SECONDS="4", db_url=iso.url)
    client = make_client(srv, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(500)]
    b = run_batch(client, lines)
    assert b.expires_at - b.created_at == 4
    done = wait_status(client, b.id, {"expired"}, timeout=30)
    assert done.expired_at >= done.expires_at
    out, err = assert_invariants(client, iso, b.id, [x["custom_id"] for x in lines])
    assert 0 < len(out) < 500
    assert {e["error"]["code"] for e in err} == {"batch_expired"}


def test_expiry_with_only_an_api_process_running(start_proc, new_key, iso, mock):
    """SPEC §11: due work is any process's. With no worker at all, the api validates the batch,
    nothing runs its requests, and its own sweeper expires it within seconds of expires_at."""
    api = start_server(start_proc, mock.base_url, role="api", EVENTBATCH_WINDOW_SECONDS="2", db_url=iso.url)
    client = make_client(api, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(50)]
    b = run_batch(client, lines)
    wait_status(client, b.id, {"in_progress"})  # the api validates; nothing runs the requests
    done = wait_status(client, b.id, {"expired"}, timeout=b.expires_at - time.time() + 5)
    assert done.expired_at - done.expires_at <= 3
    out, err = assert_invariants(client, iso, b.id, [x["custom_id"] for x in lines])
    assert out == [] and len(err) == 50
    assert {e["error"]["code"] for e in err} == {"batch_expired"}


def test_kill_9_worker_mid_batch_another_finishes(start_proc, new_key, iso):
    mock = start_mock(start_proc, "--latency-ms", "20")
    common = dict(EVENTBATCH_UPSTREAM_URL=mock.base_url, EVENTBATCH_UPSTREAM_API_KEY=UPSTREAM_KEY,
                  EVENTBATCH_LEASE_SECONDS="2", EVENTBATCH_UPSTREAM_CONCURRENCY="16", EVENTBATCH_CHUNK_SIZE="50")
    api = start_server(start_proc, mock.base_url, role="api", db_url=iso.url)
    client = make_client(api, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(3000)]
    first = start_proc("worker", db_url=iso.url, **common)
    b = run_batch(client, lines)
    while client.batches.retrieve(b.id).request_counts.completed < 300:
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    at_kill = client.batches.retrieve(b.id).request_counts.completed
    assert at_kill < 3000
    start_proc("worker", db_url=iso.url, **common)
    done = wait_status(client, b.id, {"completed"}, timeout=120)
    out, err = assert_invariants(client, iso, b.id, [x["custom_id"] for x in lines])
    assert len(out) == 3000 and err == []
    owners = iso.fetch("SELECT DISTINCT lease_epoch FROM work_chunks WHERE batch_id = $1", b.id)
    assert max(r["lease_epoch"] for r in owners) >= 2  # some chunk was taken over after its lease lapsed


def test_concurrency_cap_and_key_never_leaks(start_proc, new_key, iso):
    mock = start_mock(start_proc, "--latency-ms", "30", "--api-key", UPSTREAM_KEY)
    srv = start_server(start_proc, mock.base_url, EVENTBATCH_UPSTREAM_CONCURRENCY="8", db_url=iso.url)
    client = make_client(srv, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(400)] + [chat_line(400, mock={"status": 401})]
    b = run_batch(client, lines)
    done = wait_status(client, b.id, {"completed"}, timeout=60)
    stats = mock_stats(mock)
    assert 1 < stats["max_in_flight"] <= 8
    assert stats["authorization_seen"] == [f"Bearer {UPSTREAM_KEY}"]  # the key reached the mock
    # ... and nothing else: logs, events, views, files
    assert UPSTREAM_KEY not in srv.log()
    assert iso.fetchval("SELECT count(*) FROM events WHERE position(convert_to($1, 'UTF8') in data) > 0",
                       UPSTREAM_KEY) == 0
    assert iso.fetchval("SELECT count(*) FROM file_blobs WHERE position(convert_to($1, 'UTF8') in data) > 0",
                       UPSTREAM_KEY) == 0
    assert iso.fetchval("SELECT count(*) FROM batch_view WHERE position(convert_to($1, 'UTF8') in doc) > 0",
                       UPSTREAM_KEY) == 0
    for fid in (done.output_file_id, done.error_file_id):
        assert UPSTREAM_KEY.encode() not in client.files.content(fid).read()
    # nor any HTTP body the API returns
    bodies = [client.with_raw_response.batches.retrieve(b.id).http_response.text,
              client.with_raw_response.batches.list().http_response.text,
              client.with_raw_response.files.list().http_response.text,
              client.get(f"/batches/{b.id}/events", cast_to=object, options={"params": {"limit": 1000}}).__repr__()]
    assert all(UPSTREAM_KEY not in x for x in bodies)
    assert len(bodies[-1]) > 1000  # the events page really was read


def test_bad_upstream_config_fails_at_start_with_one_line(tmp_path, database_url):
    import subprocess
    import sys
    from conftest import ROOT, base_env
    cases = [
        ({}, "no upstream provider is configured"),
        ({"EVENTBATCH_UPSTREAM_URL": "ftp://x"}, "EVENTBATCH_UPSTREAM_URL"),
        ({"EVENTBATCH_UPSTREAM_CONCURRENCY": "lots", "EVENTBATCH_UPSTREAM_URL": "http://127.0.0.1:1/v1"},
         "EVENTBATCH_UPSTREAM_CONCURRENCY"),
    ]
    bad_toml = tmp_path / "providers.toml"
    bad_toml.write_text('[[providers]]\nname = "a"\nbase_url = "http://127.0.0.1:1/v1"\napi_key_env = "NOPE_KEY"\n')
    cases.append(({"EVENTBATCH_CONFIG": str(bad_toml)}, "NOPE_KEY"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[[providers]\n")
    cases.append(({"EVENTBATCH_CONFIG": str(broken)}, "not valid TOML"))
    for extra, needle in cases:
        env = base_env(database_url, **extra)
        r = subprocess.run([sys.executable, "-m", "eventbatch", "worker"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2, (extra, r.stderr)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_providers_from_config_file_route_by_model(start_proc, new_key, iso, tmp_path):
    a = start_mock(start_proc)
    b_mock = start_mock(start_proc, "--api-key", "second-key-xyz")
    cfg = tmp_path / "providers.toml"
    cfg.write_text(f'''
[[providers]]
name = "small"
base_url = "{a.base_url}"
models = ["small-model"]
concurrency = 4

[[providers]]
name = "rest"
base_url = "{b_mock.base_url}"
api_key_env = "SECOND_PROVIDER_KEY"
''')
    srv = start_server(start_proc, a.base_url, EVENTBATCH_CONFIG=str(cfg), SECOND_PROVIDER_KEY="second-key-xyz",
                       EVENTBATCH_UPSTREAM_URL="", db_url=iso.url)
    client = make_client(srv, new_key(db_url=iso.url))
    b1 = run_batch(client, [chat_line(i, model="small-model") for i in range(30)])
    b2 = run_batch(client, [chat_line(i, model="big-model") for i in range(20)])
    assert wait_status(client, b1.id, {"completed"}).request_counts.completed == 30
    assert wait_status(client, b2.id, {"completed"}).request_counts.completed == 20
    assert mock_stats(a)["successes"] == 30 and mock_stats(b_mock)["successes"] == 20
    assert mock_stats(b_mock)["authorization_seen"] == ["Bearer second-key-xyz"]


def test_sigterm_worker_records_what_finished_and_releases_the_rest(start_proc, new_key, iso):
    mock = start_mock(start_proc, "--latency-ms", "300")
    common = dict(EVENTBATCH_UPSTREAM_URL=mock.base_url, EVENTBATCH_UPSTREAM_API_KEY=UPSTREAM_KEY,
                  EVENTBATCH_LEASE_SECONDS="60", EVENTBATCH_UPSTREAM_CONCURRENCY="8", EVENTBATCH_CHUNK_SIZE="40")
    api = start_server(start_proc, mock.base_url, role="api", db_url=iso.url)
    client = make_client(api, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(400)]
    first = start_proc("worker", db_url=iso.url, **common)
    b = run_batch(client, lines)
    while client.batches.retrieve(b.id).request_counts.completed < 16:
        time.sleep(0.05)
    t0 = time.time()
    assert first.stop(signal.SIGTERM) == 0
    assert time.time() - t0 < 15
    log = first.log()
    assert '"worker_stopped"' in log
    # nothing is left leased to the stopped worker: the next worker need not wait 60 s for a lease
    held = iso.fetchval("SELECT count(*) FROM work_chunks WHERE batch_id = $1 AND NOT done "
                        "AND lease_expires_at > now()", b.id)
    assert held == 0
    recorded = iso.fetchval("SELECT count(*) FROM events WHERE batch_id = $1 AND request_index IS NOT NULL", b.id)
    assert recorded == client.batches.retrieve(b.id).request_counts.completed > 0
    start_proc("worker", db_url=iso.url, **common)
    wait_status(client, b.id, {"completed"}, timeout=60)
    out, err = assert_invariants(client, iso, b.id, [x["custom_id"] for x in lines])
    assert len(out) == 400 and err == []


def test_a_paused_worker_that_lost_its_lease_records_nothing(start_proc, new_key, iso):
    """The lease fence (SPEC §7): a worker paused (SIGSTOP) with requests in flight wakes while
    the batch still runs, after another worker took its chunks over and re-sent their requests
    but before those answers came back. Its own answers, which arrived while it slept, are
    refused by the fence (owner and epoch), not by the batch having ended: every request of its
    chunks keeps the outcome of the worker that holds them now."""
    mock = start_mock(start_proc, "--latency-ms", "2000")
    common = dict(EVENTBATCH_UPSTREAM_URL=mock.base_url, EVENTBATCH_UPSTREAM_API_KEY=UPSTREAM_KEY,
                  EVENTBATCH_LEASE_SECONDS="1.5", EVENTBATCH_CHUNK_SIZE="4")
    api = start_server(start_proc, mock.base_url, role="api", db_url=iso.url)
    client = make_client(api, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(200)]
    sleeper = start_proc("worker", db_url=iso.url, EVENTBATCH_UPSTREAM_CONCURRENCY="8", **common)
    b = run_batch(client, lines)
    deadline = time.time() + 30
    while mock_stats(mock)["in_flight"] < 8 and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)      # its requests are half way: their answers come while it sleeps
    held = {r["chunk_no"]: r["lease_epoch"] for r in iso.fetch(
        "SELECT chunk_no, lease_epoch FROM work_chunks WHERE batch_id = $1 AND lease_owner IS NOT NULL", b.id)}
    assert held, "the first worker holds nothing"
    sleeper.p.send_signal(signal.SIGSTOP)
    paused_at = time.time()
    try:
        start_proc("worker", db_url=iso.url, EVENTBATCH_UPSTREAM_CONCURRENCY="32", **common)
        # Wake it once the other worker has taken every one of its chunks (a new epoch each),
        # and so within the 2 s before the requests the other re-sent are answered.
        while time.time() < paused_at + 10:
            now_held = {r["chunk_no"]: r["lease_epoch"] for r in iso.fetch(
                "SELECT chunk_no, lease_epoch FROM work_chunks WHERE batch_id = $1 AND chunk_no = ANY($2::int[])",
                b.id, list(held))}
            if all(now_held[c] > held[c] for c in held):
                break
            time.sleep(0.05)
        taken_over = time.time()
    finally:
        sleeper.p.send_signal(signal.SIGCONT)
    assert taken_over < paused_at + 10, "the other worker did not take the paused worker's chunks"
    assert iso.fetchval("SELECT status FROM batch_view WHERE id = $1", b.id) == "in_progress"
    wait_status(client, b.id, {"completed"}, timeout=60)
    out, err = assert_invariants(client, iso, b.id, [x["custom_id"] for x in lines])
    assert len(out) == 200 and err == []
    log = sleeper.log()
    assert '"lease_lost"' in log
    # Every request of the chunks it held was recorded from the other worker's attempts, made
    # after the pause: none of the answers the paused worker brought back got in.
    firsts = {}
    for r in iso.fetch("SELECT data FROM events WHERE batch_id = $1 AND request_index IS NOT NULL", b.id):
        o = json.loads(ev.plain(r["data"]))
        firsts[o["index"]] = o["attempts"][0]["at"]
    taken = [i for c in held for i in range(4 * c, 4 * c + 4)]
    stale = [i for i in taken if firsts[i] < paused_at]
    assert stale == [], f"outcomes of the paused worker's attempts were recorded: {stale}"
