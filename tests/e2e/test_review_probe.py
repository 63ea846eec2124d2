import io, json, uuid
import requests as httpx
import pytest
from conftest import chat_line, jsonl, wait_status


@pytest.fixture()
def key(new_key):
    return new_key()


@pytest.mark.parametrize("method,target", [
    ("GET", "/batches/batch_%00/results"),
    ("POST", "/batches/batch_%00/retry"),
    ("GET", "/batches/batch_x/results?after=%C2%B2"),
    ("GET", "/batches/batch_x/results?after=99999999999999999999999999"),
    ("GET", "/batches/batch_x/results?status=%00"),
    ("GET", "/batches/batch_x/events?after=%00"),
    ("GET", "/batches/batch_x/events?after=99999999999999999999999999"),
    ("GET", "/batches/batch_x/events?after=%C2%B2"),
    ("GET", "/files?limit=%C2%B2"),
    ("GET", "/files?limit=99999999999999999999999999"),
    ("GET", "/files?order=%00"),
    ("GET", "/batches/" + "b" * 5000),
    ("POST", "/batches/" + "b" * 5000 + "/retry"),
    ("GET", "/batches/" + "b" * 5000 + "/results"),
])
def test_probe(server, key, method, target):
    r = httpx.request(method, server.base_url + target, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    print(method, target, r.status_code, r.text[:300])
    assert r.status_code < 500


@pytest.fixture()
def real_batch(server, new_key):
    import openai
    k = new_key()
    c = openai.OpenAI(base_url=server.base_url, api_key=k, max_retries=0, timeout=60)
    f = c.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    return k, b.id


@pytest.mark.parametrize("target", [
    "/results?after=99999999999999999999999999",
    "/results?after=9223372036854775808",
    "/events?after=99999999999999999999999999",
    "/events?after=9223372036854775808",
])
def test_probe_real(server, real_batch, target):
    k, bid = real_batch
    r = httpx.get(server.base_url + "/batches/" + bid + target, headers={"Authorization": f"Bearer {k}"}, timeout=30)
    print(target, r.status_code, r.text[:300])
    assert r.status_code < 500
