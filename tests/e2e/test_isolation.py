"""One project never sees another's files or batches: the same 404 as an id that never existed,
on every route, and lists never show foreign objects."""

from __future__ import annotations

import io

import openai
import pytest

from conftest import jsonl, slow_line, wait_status


@pytest.fixture()
def two_tenants(server, new_key):
    a = openai.OpenAI(base_url=server.base_url, api_key=new_key(), max_retries=0)
    b = openai.OpenAI(base_url=server.base_url, api_key=new_key(), max_retries=0)
    return a, b


def _not_found_body(call):
    with pytest.raises(openai.NotFoundError) as e:
        call()
    return e.value.status_code, {k: v for k, v in e.value.body.items() if k != "message"}


def test_foreign_ids_get_the_same_404_as_missing_ones(two_tenants):
    a, b = two_tenants
    f = a.files.create(file=("a.jsonl", io.BytesIO(jsonl([slow_line(1)]))), purpose="batch")
    batch = a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(a, batch.id, {"in_progress"})
    missing_file, missing_batch = "file-" + "0" * 24, "batch_" + "0" * 24
    for foreign, missing in ((f.id, missing_file),):
        for call in (lambda i: b.files.retrieve(i), lambda i: b.files.content(i), lambda i: b.files.delete(i)):
            assert _not_found_body(lambda: call(foreign)) == _not_found_body(lambda: call(missing))
    for call in (lambda i: b.batches.retrieve(i), lambda i: b.batches.cancel(i)):
        assert _not_found_body(lambda: call(batch.id)) == _not_found_body(lambda: call(missing_batch))
    # the message names the id asked for, and nothing else differs
    with pytest.raises(openai.NotFoundError) as e:
        b.batches.retrieve(batch.id)
    assert batch.id in e.value.body["message"]
    # B cannot build a batch on A's file: the same answer as an unknown file
    with pytest.raises(openai.BadRequestError) as e1:
        b.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError) as e2:
        b.batches.create(input_file_id=missing_file, endpoint="/v1/chat/completions", completion_window="24h")
    assert e1.value.body["param"] == e2.value.body["param"] == "input_file_id"
    # lists never show foreign objects; A's objects are untouched by B's attempts
    assert b.files.list().data == [] and b.batches.list().data == []
    assert [x.id for x in a.files.list().data] == [f.id]
    assert [x.id for x in a.batches.list().data] == [batch.id]
    assert a.batches.retrieve(batch.id).status == "in_progress"
    assert a.files.content(f.id).read() == jsonl([slow_line(1)])
    # a deleted file is a 404 like the others
    a.files.delete(f.id)
    assert _not_found_body(lambda: a.files.retrieve(f.id)) == _not_found_body(lambda: a.files.retrieve(missing_file))
    a.batches.cancel(batch.id)


def test_missing_and_unknown_keys_get_401(server):
    import urllib.error
    import urllib.request
    import json
    for headers in ({}, {"Authorization": "Bearer eb-unknown"}, {"Authorization": "Basic abc"}):
        req = urllib.request.Request(server.base_url + "/files", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 401
        body = json.loads(e.value.read())
        assert body["error"]["type"] == "invalid_request_error" and "key" in body["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="eb-wrong", max_retries=0).batches.list()
