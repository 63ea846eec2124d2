"""Problems inside the input file: the batch is created, then fails with every bad line."""

from __future__ import annotations

import io
import json
import time

import openai

from conftest import chat_line, jsonl, start_mock, start_server, wait_status


def create(client, data: bytes, endpoint="/v1/chat/completions"):
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")


def test_every_bad_line_reported_together(client):
    lines = [
        chat_line(0),                                                            # 1 ok
        "{not json",                                                             # 2
        {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}},  # 3 no custom_id
        chat_line(0),                                                            # 4 duplicate
        {**chat_line(4), "method": "GET"},                                       # 5
        {**chat_line(5), "url": "/v1/embeddings"},                               # 6
        chat_line(6, model="other-model"),                                       # 7
        {**chat_line(7), "body": {"messages": []}},                              # 8 no model
        chat_line(8, stream=True),                                               # 9
        {**chat_line(9), "custom_id": ""},                                       # 10
        chat_line(10),                                                           # 11 ok
    ]
    b = wait_status(client, create(client, jsonl(lines)).id, {"failed"})
    assert b.failed_at is not None and b.in_progress_at is None
    got = [(e.line, e.code, e.param) for e in b.errors.data]
    assert got == [
        (2, "invalid_json_line", None),
        (3, "missing_required_parameter", "custom_id"),
        (4, "duplicate_custom_id", "custom_id"),
        (5, "invalid_method", "method"),
        (6, "mismatched_url", "url"),
        (7, "mismatched_model", "body.model"),
        (8, "missing_model", "body.model"),
        (9, "streaming_unsupported", "body.stream"),
        (10, "invalid_custom_id", "custom_id"),
    ]
    assert all(e.message for e in b.errors.data)
    assert b.errors.object == "list"


def test_a_line_nested_too_deep_is_bad_json_not_a_stuck_batch(client):
    b = wait_status(client, create(client, jsonl([chat_line(0), "[" * 1200, chat_line(2)])).id, {"failed"})
    assert [(e.line, e.code) for e in b.errors.data] == [(2, "invalid_json_line")]


def test_empty_file(client):
    b = wait_status(client, create(client, b"\n\n").id, {"failed"})
    assert [e.code for e in b.errors.data] == ["empty_file"]


def test_too_many_embedding_inputs(client):
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "text-embedding-3-small", "input": ["x"] * 1000}} for i in range(51)]
    b = wait_status(client, create(client, jsonl(lines), "/v1/embeddings").id, {"failed"})
    assert [e.code for e in b.errors.data] == ["too_many_embedding_inputs"]


def test_too_many_requests(client):
    data = b"".join(b'{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}\n' % i
                    for i in range(50_001))
    b = wait_status(client, create(client, data).id, {"failed"}, timeout=120)
    assert [(e.code, e.line) for e in b.errors.data] == [("too_many_requests", 50_001)]


def test_error_list_is_capped_and_says_so(client):
    data = b"".join(b"{broken\n" for _ in range(1500))
    b = wait_status(client, create(client, data).id, {"failed"}, timeout=60)
    assert len(b.errors.data) == 1001
    assert b.errors.data[999].line == 1000
    assert b.errors.data[-1].code == "too_many_errors" and "1500" in b.errors.data[-1].message


def test_valid_50000_line_file_of_100mb(client, db):
    pad = "x" * 1900
    data = b"".join(json.dumps(chat_line(i, max_tokens=16) | {"body": {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": f"{i} {pad}"}]}}).encode() + b"\n" for i in range(50_000))
    assert len(data) > 95_000_000
    t0 = time.perf_counter()
    b = create(client, data)
    b = wait_status(client, b.id, {"in_progress", "failed"}, timeout=180)
    assert b.status == "in_progress", b.errors
    assert b.request_counts.total == 50_000 and b.model == "gpt-4o-mini"
    rows = db.fetch("SELECT data FROM events WHERE batch_id = $1 AND type = 'batch_validated'", b.id)
    assert len(rows) == 1
    print(f"\n[validate] 50,000 lines, {len(data) / 1e6:.1f} MB: upload+create+validate "
          f"{time.perf_counter() - t0:.2f}s wall (see test_validation.py for the validator's CPU figure)")
    client.batches.cancel(b.id)


def test_a_model_no_provider_serves_fails_the_batch_with_model_not_found(start_proc, new_key, fresh_db, tmp_path):
    # One provider that serves one model, and no provider for every model: a file naming another
    # model fails at validation (on the API, or on the worker's sweep; both check) instead of
    # every request failing at run time.
    iso = fresh_db()                      # only this test's processes validate its batches
    mock = start_mock(start_proc)
    cfg = tmp_path / "providers.toml"
    cfg.write_text(f'[[providers]]\nname = "only"\nbase_url = "{mock.base_url}"\nmodels = ["served-model"]\n')
    srv = start_server(start_proc, mock.base_url, EVENTBATCH_CONFIG=str(cfg), EVENTBATCH_UPSTREAM_URL="",
                       db_url=iso.url)
    client = openai.OpenAI(base_url=srv.base_url, api_key=new_key(db_url=iso.url), max_retries=0, timeout=60)

    lines = ["{broken"] + [chat_line(i, model="other-model") for i in range(1, 5)]
    b = wait_status(client, create(client, jsonl(lines)).id, {"failed", "in_progress", "completed"})
    assert b.status == "failed" and b.failed_at is not None
    assert [(e.code, e.param, e.line) for e in b.errors.data] == [
        ("model_not_found", "body.model", 2), ("invalid_json_line", None, 1)]
    assert '"other-model"' in b.errors.data[0].message

    ok = wait_status(client, create(client, jsonl([chat_line(i, model="served-model") for i in range(3)])).id,
                     {"failed", "completed"})
    assert ok.status == "completed" and ok.request_counts.completed == 3, ok.errors
