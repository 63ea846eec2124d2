"""The whole user flow through the official openai client: upload → create → retrieve → list
across pages → cancel → cancelled."""

from __future__ import annotations

import io
import time

import openai
import pytest

from conftest import chat_line, jsonl, slow_line, wait_status


def upload(client: openai.OpenAI, lines, name="requests.jsonl"):
    return client.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose="batch")


def test_upload_retrieve_list_download_delete(client):
    data = jsonl([chat_line(i) for i in range(3)])
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert f.id.startswith("file-") and f.bytes == len(data) and f.filename == "in.jsonl"
    assert f.purpose == "batch" and f.status == "processed" and f.object == "file"
    assert abs(f.created_at - time.time()) < 60
    assert client.files.retrieve(f.id).model_dump() == f.model_dump()
    assert client.files.content(f.id).read() == data
    g = upload(client, [chat_line(9)], "second.jsonl")
    listed = client.files.list()
    assert [x.id for x in listed.data] == [g.id, f.id]  # newest first by default
    asc = client.files.list(order="asc")
    assert [x.id for x in asc.data] == [f.id, g.id]
    page = client.files.list(limit=1)
    assert [x.id for x in page.data] == [g.id] and page.has_more
    page2 = client.files.list(limit=1, after=g.id)
    assert [x.id for x in page2.data] == [f.id] and not page2.has_more
    assert client.files.list(purpose="batch_output").data == []
    deleted = client.files.delete(f.id)
    assert deleted.id == f.id and deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)
    assert [x.id for x in client.files.list().data] == [g.id]


def test_file_expires_after(client):
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 7200})
    assert f.expires_at == f.created_at + 7200
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("in.jsonl", io.BytesIO(b"{}")), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 10})
    assert e.value.body["param"] == "expires_after.seconds"


def test_batch_flow_create_list_cancel(client):
    f = upload(client, [slow_line(i) for i in range(5)])
    created = []
    for n in range(3):
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"job": f"nightly-{n}"})
        assert b.status == "validating" and b.metadata == {"job": f"nightly-{n}"}
        assert b.expires_at == b.created_at + 86400 and b.input_file_id == f.id
        created.append(b.id)
    b = wait_status(client, created[-1], {"in_progress"})
    assert b.request_counts.total == 5 and b.model == "gpt-4o-mini" and b.in_progress_at >= b.created_at
    # list newest first, across pages
    seen, after = [], None
    while True:
        page = client.batches.list(limit=2, **({"after": after} if after else {}))
        seen += [x.id for x in page.data]
        if not page.has_more:
            break
        after = page.data[-1].id
    assert seen == list(reversed(created))
    # auto-pagination of the SDK too
    assert [x.id for x in client.batches.list(limit=1)] == list(reversed(created))
    c = client.batches.cancel(created[-1])
    assert c.status in ("cancelling", "cancelled") and c.cancelling_at is not None
    done = wait_status(client, created[-1], {"cancelled"})
    assert done.cancelled_at >= done.cancelling_at
    assert done.request_counts.total == 5 and done.request_counts.failed == 5 and done.request_counts.completed == 0
    lines = client.files.content(done.error_file_id).read().decode().splitlines()
    import json
    errs = [json.loads(x) for x in lines]
    assert sorted(e["custom_id"] for e in errs) == [f"req-{i}" for i in range(5)]
    assert all(e["response"] is None and e["error"]["code"] == "batch_cancelled" for e in errs)
    assert done.output_file_id is None
    # cancelling a terminal batch: 409; a cancelled batch stays cancelled
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(created[-1])
    assert client.batches.retrieve(created[-1]).status == "cancelled"


def test_cancel_while_validating_is_immediate_and_accounted(client):
    f = upload(client, [slow_line(i) for i in range(2000)])
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    client.batches.cancel(b.id)
    done = wait_status(client, b.id, {"cancelled"}, timeout=30)
    rc = done.request_counts
    # cancelled before or after validation finished: every request gets its batch_cancelled line
    assert rc.completed == 0 and rc.failed == rc.total == 2000
    assert done.failed_at is None  # cancelling never leads to failed


@pytest.mark.parametrize("kwargs,param", [
    (dict(endpoint="/v1/images/variations"), "endpoint"),
    (dict(completion_window="48h"), "completion_window"),
    (dict(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
    (dict(metadata={"k" * 65: "v"}), "metadata." + "k" * 65),
    (dict(metadata={"k": "v" * 513}), "metadata.k"),
    (dict(input_file_id="file-doesnotexist"), "input_file_id"),
])
def test_create_rejects_bad_parameters(client, kwargs, param):
    f = upload(client, [chat_line(1)])
    args = dict(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h") | kwargs
    before = len(client.batches.list(limit=100).data)
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(**args)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error"
    assert len(client.batches.list(limit=100).data) == before  # no batch created


def test_create_rejects_output_file_as_input(client, db):
    # a batch_output file of this project is not an input file
    f = upload(client, [slow_line(1)])
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    client.batches.cancel(b.id)
    done = wait_status(client, b.id, {"cancelled"})
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=done.error_file_id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    assert e.value.body["param"] == "input_file_id" and "purpose" in e.value.body["message"]


def test_deleting_the_input_of_a_running_batch_keeps_it_running(client, db):
    f = upload(client, [chat_line(i) for i in range(3)] + [slow_line(3, seconds=3)])
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, b.id, {"in_progress"})
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    done = wait_status(client, b.id, {"completed"}, timeout=30)
    assert done.request_counts.completed == 4  # the bytes stayed while the batch needed them
    assert db.fetchval("SELECT count(*) FROM file_blobs WHERE file_id = $1", f.id) == 0  # and went after
