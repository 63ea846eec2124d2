"""POST /v1/batches/{id}/retry (SPEC §12.2) through the official openai client: a new batch
whose input file holds the failed requests' input lines byte for byte."""

from __future__ import annotations

import io
import json

import openai
import pytest
from openai.types import Batch

from conftest import chat_line, jsonl, slow_line, wait_status


def retry(client: openai.OpenAI, batch_id: str) -> Batch:
    """What a user of the openai client calls: a POST of the client's own, answered as a Batch."""
    return client.post(f"/batches/{batch_id}/retry", cast_to=Batch)


def raw_line(i: int, fail: bool) -> bytes:
    """An input line as a person might write it: odd spacing, key order, escapes, non-ASCII."""
    body = chat_line(i, **({"mock": {"status": 400}} if fail else {}))["body"]
    return (b'{ "url":"/v1/chat/completions",  "custom_id" : "r\\u00e9q-%d", "method":"POST",\t"body": %s }'
            % (i, json.dumps(body, ensure_ascii=False, indent=1).replace("\n", " ").encode()))


def test_retry_input_is_the_failed_lines_byte_for_byte(client):
    failing = {1, 4, 5, 9}
    lines = [raw_line(i, i in failing) for i in range(10)]
    # a blank line and CRLF endings: not requests / part of the line as it was
    data = b"\n".join(lines[:3]) + b"\n\n" + b"\r\n".join(lines[3:7]) + b"\r\n" + b"\n".join(lines[7:])
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"job": "nightly"})
    done = wait_status(client, b.id, {"completed"}, timeout=60)
    assert done.request_counts.failed == 4
    assert done.model_extra["retry_of"] is None
    again = retry(client, b.id)
    assert again.id != b.id and again.model_extra["retry_of"] == b.id
    assert again.endpoint == b.endpoint and again.completion_window == b.completion_window
    assert again.metadata == {"job": "nightly"} and again.status == "validating"
    new_input = client.files.retrieve(again.input_file_id)
    assert new_input.filename == f"{b.id}_retry.jsonl" and new_input.purpose == "batch"
    want = b"".join(lines[i] + (b"\r" if 3 <= i < 7 else b"") + b"\n" for i in sorted(failing))
    got = client.files.content(again.input_file_id).read()
    assert got == want and new_input.bytes == len(want)
    # the lines are the error file's requests, and the retry runs them
    err = [json.loads(x) for x in client.files.content(done.error_file_id).read().splitlines()]
    assert [json.loads(x)["custom_id"] for x in got.splitlines()] == [e["custom_id"] for e in err]
    retried = wait_status(client, again.id, {"completed"}, timeout=60)
    assert retried.request_counts.total == 4 and retried.model_extra["retry_of"] == b.id
    assert client.batches.retrieve(again.id).model_extra["retry_of"] == b.id
    assert any(x.id == again.id and x.model_extra["retry_of"] == b.id for x in client.batches.list())


def test_retry_refuses_what_it_cannot_do(client, server, new_key):
    running = client.batches.create(input_file_id=client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([slow_line(0, seconds=30)]))), purpose="batch").id,
        endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.ConflictError) as e:          # not ended yet
        retry(client, running.id)
    assert "ended" in e.value.body["message"]
    other = openai.OpenAI(base_url=server.base_url, api_key=new_key(), max_retries=0)
    with pytest.raises(openai.NotFoundError):                # another project's batch
        retry(other, running.id)
    with pytest.raises(openai.NotFoundError):
        retry(client, "batch_doesnotexist")
    client.batches.cancel(running.id)
    cancelled = wait_status(client, running.id, {"cancelled"})
    assert retry(client, cancelled.id).model_extra["retry_of"] == running.id   # batch_cancelled lines retry
    ok = client.batches.create(input_file_id=client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([chat_line(0)]))), purpose="batch").id,
        endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, ok.id, {"completed"})
    with pytest.raises(openai.BadRequestError) as e:         # nothing failed
        retry(client, ok.id)
    assert "nothing to retry" in e.value.body["message"]
    bad = client.batches.create(input_file_id=client.files.create(
        file=("bad.jsonl", io.BytesIO(b"{nope\n")), purpose="batch").id,
        endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, bad.id, {"failed"})
    before = len(client.batches.list(limit=100).data)
    with pytest.raises(openai.BadRequestError):
        retry(client, ok.id)
    with pytest.raises(openai.BadRequestError) as e:         # failed validation: nothing ran
        retry(client, bad.id)
    assert "validation" in e.value.body["message"]
    assert len(client.batches.list(limit=100).data) == before   # no batch was made by a refused retry


def test_retry_after_the_input_file_was_deleted_says_so(client):
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(0, mock={"status": 400})]))),
                            purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, b.id, {"completed"})
    client.files.delete(f.id)
    with pytest.raises(openai.ConflictError) as e:
        retry(client, b.id)
    assert "no longer stored" in e.value.body["message"] and "Upload them again" in e.value.body["message"]
