"""A provider's rpm and tpm hold for the whole deployment (SPEC §11): two worker processes share
one minute's budget through Postgres, so together they never send more than it allows."""

from __future__ import annotations

import collections
import datetime
import io
import json
import time
import urllib.request

import openai

from conftest import chat_line, jsonl, start_mock, start_server
from eventbatch import events as ev


def _per_minute(mock, since: float) -> dict[datetime.datetime, list[dict]]:
    """The requests the mock saw, by the (UTC) minute they arrived in: the minutes the budget counts."""
    with urllib.request.urlopen(f"{mock.control_root}/_mock/requests?since={since}") as r:
        rows = json.loads(r.read())["data"]
    minutes = collections.defaultdict(list)
    for row in rows:
        at = datetime.datetime.fromtimestamp(row["started_at"], datetime.timezone.utc)
        minutes[at.replace(second=0, microsecond=0)].append(row)
    return minutes


def _deployment(start_proc, fresh_db, tmp_path, limits: str):
    iso = fresh_db()
    mock = start_mock(start_proc)
    cfg = tmp_path / "providers.toml"
    # concurrency 2 (a worker claims 4x that) and chunks of 5 requests: both workers hold some
    # of the batch at once
    cfg.write_text(f'[[providers]]\nname = "limited"\nbase_url = "{mock.base_url}"\nconcurrency = 2\n{limits}\n')
    env = dict(EVENTBATCH_CONFIG=str(cfg), EVENTBATCH_UPSTREAM_URL="", EVENTBATCH_CHUNK_SIZE="5")
    api = start_server(start_proc, mock.base_url, role="api", db_url=iso.url, **env)
    for _ in range(2):
        start_proc("worker", db_url=iso.url, **env)
    return iso, mock, api


def _submit(api, key, lines):
    client = openai.OpenAI(base_url=api.base_url, api_key=key, max_retries=0, timeout=60)
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return client, client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def test_rpm_holds_across_two_workers(start_proc, new_key, fresh_db, tmp_path):
    iso, mock, api = _deployment(start_proc, fresh_db, tmp_path, "rpm = 12")
    since = time.time()
    client, b = _submit(api, new_key(db_url=iso.url), [chat_line(i) for i in range(60)])
    time.sleep(12)
    minutes = _per_minute(mock, since)
    client.batches.cancel(b.id)
    assert sum(len(rows) for rows in minutes.values()) >= 12      # the budget was used ...
    assert all(len(rows) <= 12 for rows in minutes.values()), {m: len(r) for m, r in minutes.items()}  # ... not more


def test_tpm_holds_across_two_workers_estimated_then_settled(start_proc, new_key, fresh_db, tmp_path):
    # each request asks for at most 100 output tokens: about 130 tokens estimated, ~105 used
    iso, mock, api = _deployment(start_proc, fresh_db, tmp_path, "tpm = 1500")
    since = time.time()
    client, b = _submit(api, new_key(db_url=iso.url), [chat_line(i, max_tokens=100) for i in range(60)])
    time.sleep(12)
    client.batches.cancel(b.id)
    minutes = _per_minute(mock, since)
    done = [json.loads(ev.plain(bytes(r["data"]))) for r in iso.fetch(
        "SELECT data FROM events WHERE batch_id = $1 AND type = 'request_succeeded'", b.id)]
    used = {e["index"]: e["usage"]["total_tokens"] for e in done}
    assert len(used) >= 8
    per_request = max(used.values())
    assert 100 < per_request < 130
    # what was sent in each minute fits the tokens per minute
    assert all(len(rows) * per_request <= 1500 for rows in minutes.values()), {m: len(r) for m, r in minutes.items()}
