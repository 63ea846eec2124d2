"""Operators' view: metrics, structured logs, and many api and worker processes on one database."""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request

from conftest import UPSTREAM_KEY, chat_line, jsonl, mock_stats, start_mock, start_server, wait_status
from invariants import assert_invariants


def scrape(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base.removesuffix("/v1") + "/metrics") as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_move_as_a_batch_runs_and_reveal_no_tenant(server, client):
    before = scrape(server.base_url)
    lines = [chat_line(i) for i in range(200)] + [chat_line(200, mock={"status": 400})]
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, b.id, {"completed"})
    after = scrape(server.base_url)

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)
    assert delta('eventbatch_requests_total{outcome="completed"}') >= 200
    assert delta('eventbatch_requests_total{outcome="failed"}') >= 1
    assert delta('eventbatch_upstream_attempts_total{status_code="200"}') >= 200
    assert delta('eventbatch_upstream_attempts_total{status_code="400"}') >= 1
    assert delta("eventbatch_upstream_latency_seconds_count") >= 201
    assert delta("eventbatch_events_appended_total") >= 201 + 6
    assert after['eventbatch_batches{status="completed"}'] >= 1
    assert "eventbatch_requests_waiting" in after
    assert delta('eventbatch_http_requests_total{method="POST",route="/v1/batches",status="200"}') == 1
    with urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/metrics") as r:
        text = r.read().decode()
    assert b.id not in text and f.id not in text and "proj-" not in text and UPSTREAM_KEY not in text


def test_logs_are_json_lines_with_request_ids(server, client):
    client.batches.list()
    raw = client.with_raw_response.batches.list()
    request_id = raw.headers["x-request-id"]
    time.sleep(0.2)
    entries = [json.loads(line) for line in server.log().splitlines() if line.strip()]  # every line is JSON
    http = [e for e in entries if e["event"] == "http_request"]
    mine = [e for e in http if e["request_id"] == request_id]
    assert len(mine) == 1  # logged once
    assert mine[0]["method"] == "GET" and mine[0]["route"] == "/v1/batches" and mine[0]["status"] == 200
    assert isinstance(mine[0]["duration_ms"], float) and "timestamp" in mine[0] and mine[0]["level"] == "info"
    claimed = [e for e in entries if e["event"] == "chunk_claimed"]
    assert claimed and all(e["batch_id"].startswith("batch_") for e in claimed)
    # never a key, a request body or a response body
    text = server.log()
    assert UPSTREAM_KEY not in text and "question " not in text and "echo:" not in text
    assert "Bearer" not in text


def test_two_apis_and_three_workers_on_one_database(start_proc, new_key, fresh_db):
    iso = fresh_db()
    mock = start_mock(start_proc, "--latency-ms", "10")
    env = dict(EVENTBATCH_CHUNK_SIZE="50", EVENTBATCH_UPSTREAM_CONCURRENCY="16")
    apis = [start_server(start_proc, mock.base_url, role="api", db_url=iso.url, **env) for _ in range(2)]
    workers = [start_proc("worker", db_url=iso.url, EVENTBATCH_UPSTREAM_URL=mock.base_url,
                          EVENTBATCH_UPSTREAM_API_KEY=UPSTREAM_KEY, **env) for _ in range(3)]
    import openai
    key = new_key(db_url=iso.url)
    c1, c2 = (openai.OpenAI(base_url=a.base_url, api_key=key, max_retries=0) for a in apis)
    lines = [chat_line(i) for i in range(3000)]
    f = c1.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = c2.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + 120
    n = 0
    while (cur := (c1, c2)[n % 2].batches.retrieve(b.id)).status != "completed":
        assert time.time() < deadline, cur.status
        n += 1
        time.sleep(0.1)
    out, err = assert_invariants(c2, iso, b.id, [x["custom_id"] for x in lines])
    assert len(out) == 3000 and err == []
    assert [x.id for x in c1.batches.list().data] == [x.id for x in c2.batches.list().data] == [b.id]
    claimers = {w.args[0] + str(i) for i, w in enumerate(workers)
                if any(json.loads(x).get("event") == "chunk_claimed" for x in w.log().splitlines() if x.strip())}
    assert len(claimers) >= 2, "the work was not shared between the workers"
    assert mock_stats(mock)["duplicate_successes"] == 0


def test_worker_probes_and_metrics_port(start_proc, fresh_db, mock):
    from conftest import free_port, wait_http
    iso = fresh_db()
    port = free_port()
    w = start_proc("worker", "--metrics-port", str(port), db_url=iso.url, EVENTBATCH_UPSTREAM_URL=mock.base_url)
    wait_http(f"http://127.0.0.1:{port}/healthz", w)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as r:
        assert json.loads(r.read()) == {"status": "ready"}
    values = scrape(f"http://127.0.0.1:{port}")
    assert "eventbatch_requests_waiting" in values


def test_upstream_error_bodies_are_scrubbed_of_the_key():
    from eventbatch.worker.upstream import _scrub
    body = b'{"error":{"message":"Incorrect API key provided: secret-123"}}'
    assert _scrub(body, "secret-123") == b'{"error":{"message":"Incorrect API key provided: [redacted]"}}'
    assert re.search(rb"secret", _scrub(body, "secret-123")) is None
