"""A poison chunk (issue 9): a chunk whose input lines cannot be read back from storage is tried
a bounded number of times (batch.POISON_AFTER), then its requests fail with input_unreadable, so
the batch ends; and a batch whose window passes while such a chunk is open still expires with
every request accounted for. Real processes over loopback; the damage is done as the superuser
after validation, where the stored bytes live (file_blobs)."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import UPSTREAM_KEY, chat_line, jsonl, start_server, wait_status
from eventbatch import batch as domain
from invariants import assert_invariants


def make_client(proc, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=proc.base_url, api_key=key, max_retries=0, timeout=60)


def validated_batch(client, lines):
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, b.id, {"in_progress"})       # validated by the api; no worker runs yet
    return b, f.id


def test_a_batch_whose_input_bytes_are_gone_completes_with_every_request_failed_once(start_proc, new_key,
                                                                                      fresh_db, mock):
    iso = fresh_db()
    api = start_server(start_proc, mock.base_url, role="api", EVENTBATCH_CHUNK_SIZE="50", db_url=iso.url)
    client = make_client(api, new_key(db_url=iso.url))
    b, file_id = validated_batch(client, [chat_line(i) for i in range(100)])
    assert iso.fetchval("SELECT count(*) FROM work_chunks WHERE batch_id = $1", b.id) == 2
    iso.execute("DELETE FROM file_blobs WHERE file_id = $1", file_id)
    started = time.time()
    worker = start_proc("worker", db_url=iso.url, EVENTBATCH_UPSTREAM_URL=mock.base_url,
                        EVENTBATCH_UPSTREAM_API_KEY=UPSTREAM_KEY)
    done = wait_status(client, b.id, {"completed", "failed", "expired", "cancelled"}, timeout=30)
    assert done.status == "completed" and time.time() - started < 25
    rc = done.request_counts
    assert (rc.total, rc.completed, rc.failed) == (100, 0, 100)
    assert done.output_file_id is None
    err = [json.loads(x) for x in client.files.content(done.error_file_id).read().splitlines()]
    assert len(err) == 100 and {e["error"]["code"] for e in err} == {domain.INPUT_UNREADABLE}
    # nothing of the lines could be read: "" (never a valid custom_id) stands for each; the line
    # ids still tell them apart, and each request has exactly one outcome
    assert {e["custom_id"] for e in err} == {""} and len({e["id"] for e in err}) == 100
    assert "Upload the file again" in err[0]["error"]["message"]
    indexes = iso.fetch("SELECT request_index FROM events WHERE batch_id = $1 AND request_index IS NOT NULL", b.id)
    assert sorted(r["request_index"] for r in indexes) == list(range(100))
    # bounded: each chunk claimed and read POISON_AFTER times, no other failure, then done
    log = worker.log()
    assert log.count('"chunk_unreadable"') == 2 * domain.POISON_AFTER
    assert log.count('"chunk_claimed"') == 2 * domain.POISON_AFTER
    assert '"chunk_failed"' not in log
    time.sleep(1.5)     # and nothing comes back for it afterwards
    assert worker.log().count('"chunk_claimed"') == 2 * domain.POISON_AFTER


def test_a_damaged_batch_past_its_window_still_expires(start_proc, new_key, fresh_db, mock):
    """The window (3 s) ends while the damaged chunk waits between its reads: the settling reads
    what it can of that chunk's lines and gives every unfinished request its batch_expired line."""
    iso = fresh_db()
    window = dict(EVENTBATCH_WINDOW_SECONDS="3", EVENTBATCH_CHUNK_SIZE="50")
    api = start_server(start_proc, mock.base_url, role="api", db_url=iso.url, **window)
    client = make_client(api, new_key(db_url=iso.url))
    lines = [chat_line(i) for i in range(100)]
    b, file_id = validated_batch(client, lines)
    chunk = iso.fetch("SELECT byte_start FROM work_chunks WHERE batch_id = $1 AND chunk_no = 1", b.id)[0]
    # garbage over the first line of the second chunk
    iso.execute("UPDATE file_blobs SET data = overlay(data placing '\\x2a2a2a2a'::bytea from $2 + 1) "
                "WHERE file_id = $1 AND piece = 0", file_id, chunk["byte_start"])
    worker = start_proc("worker", db_url=iso.url, EVENTBATCH_UPSTREAM_URL=mock.base_url,
                        EVENTBATCH_UPSTREAM_API_KEY=UPSTREAM_KEY, **window)
    done = wait_status(client, b.id, {"completed", "failed", "expired", "cancelled"},
                       timeout=b.expires_at - time.time() + 20)
    assert done.status == "expired"
    # the damaged line's custom_id cannot be read ("" stands for it); every other request once
    out, err = assert_invariants(client, iso, b.id, [f"req-{i}" for i in range(100) if i != 50] + [""])
    damaged = [e for e in err if e["custom_id"] == "" or int(e["custom_id"].removeprefix("req-")) >= 50]
    assert len(damaged) == 50
    assert {e["error"]["code"] for e in damaged} <= {domain.BATCH_EXPIRED, domain.INPUT_UNREADABLE}
    assert domain.BATCH_EXPIRED in {e["error"]["code"] for e in damaged}   # the window ended it, mid-tries
    assert worker.log().count('"chunk_unreadable"') < domain.POISON_AFTER


def test_retrying_a_batch_whose_stored_lines_no_longer_add_up_is_a_409_that_says_what_to_do(start_proc, new_key,
                                                                                               fresh_db, mock):
    iso = fresh_db()
    api = start_server(start_proc, mock.base_url, role="api", EVENTBATCH_CHUNK_SIZE="50", db_url=iso.url)
    key = new_key(db_url=iso.url)
    client = make_client(api, key)
    b, file_id = validated_batch(client, [chat_line(i) for i in range(100)])
    chunk = iso.fetch("SELECT byte_start FROM work_chunks WHERE batch_id = $1 AND chunk_no = 1", b.id)[0]
    # a newline inside the garbage: the second chunk's bytes now hold 51 lines
    iso.execute("UPDATE file_blobs SET data = overlay(data placing '\\x2a0a2a2a'::bytea from $2 + 1) "
                "WHERE file_id = $1 AND piece = 0", file_id, chunk["byte_start"])
    start_proc("worker", db_url=iso.url, EVENTBATCH_UPSTREAM_URL=mock.base_url, EVENTBATCH_UPSTREAM_API_KEY=UPSTREAM_KEY)
    done = wait_status(client, b.id, {"completed", "failed", "expired", "cancelled"}, timeout=30)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (50, 50)
    request = urllib.request.Request(f"{api.base_url}/batches/{b.id}/retry", data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 409
    message = json.loads(refused.value.read())["error"]["message"]
    assert "damaged" in message and "Upload the file again" in message
