"""Bad requests get OpenAI-style errors, never a 500, an HTML page or a traceback."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import openai
import pytest

from conftest import chat_line, jsonl


def call(server, key, method, path, body=None, headers=None):
    h = {"Authorization": f"Bearer {key}"} | (headers or {})
    req = urllib.request.Request(server.base_url.removesuffix("/v1") + path, method=method, data=body, headers=h)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def assert_envelope(status, headers, body, expect_status, param="<any>"):
    assert status == expect_status, body
    assert headers["Content-Type"].startswith("application/json")
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in err["message"]
    if param != "<any>":
        assert err["param"] == param
    return err


J = {"Content-Type": "application/json"}


@pytest.mark.parametrize("body,param", [
    (b"{not json", None),
    (b"[]", None),
    (b"{}", "input_file_id"),
    (json.dumps({"input_file_id": "file-x", "endpoint": "/v1/chat/completions"}).encode(), "completion_window"),
    (json.dumps({"input_file_id": 5, "endpoint": "/v1/chat/completions", "completion_window": "24h"}).encode(),
     "input_file_id"),
    (json.dumps({"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h",
                 "metadata": {"a": 1}}).encode(), "metadata.a"),
    (json.dumps({"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h",
                 "surprise": 1}).encode(), "surprise"),
])
def test_bad_create_bodies(server, new_key, body, param):
    assert_envelope(*call(server, new_key(), "POST", "/v1/batches", body, J), 400, param)


def test_unknown_routes_and_methods(server, new_key):
    key = new_key()
    assert_envelope(*call(server, key, "GET", "/v1/nothing-here"), 404)
    assert_envelope(*call(server, key, "GET", "/elsewhere"), 404)
    assert_envelope(*call(server, key, "PUT", "/v1/batches"), 405)
    assert_envelope(*call(server, key, "GET", "/v1/batches/batch_nope"), 404, "id")


def test_bad_list_parameters(server, new_key):
    key = new_key()
    assert_envelope(*call(server, key, "GET", "/v1/batches?limit=0"), 400, "limit")
    assert_envelope(*call(server, key, "GET", "/v1/batches?limit=101"), 400, "limit")
    assert_envelope(*call(server, key, "GET", "/v1/files?limit=abc"), 400, "limit")
    assert_envelope(*call(server, key, "GET", "/v1/files?order=sideways"), 400, "order")
    assert_envelope(*call(server, key, "GET", "/v1/batches?after=batch_unknown"), 400, "after")


def test_bad_uploads(server, new_key):
    key = new_key()
    assert_envelope(*call(server, key, "POST", "/v1/files", b"{}", J), 400, "file")
    boundary = "XyZ"

    def multipart(*parts):
        out = b""
        for name, value, filename in parts:
            disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
            out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"
        return out + f"--{boundary}--\r\n".encode()

    mp = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert_envelope(*call(server, key, "POST", "/v1/files", multipart(("purpose", b"batch", None)), mp), 400, "file")
    assert_envelope(*call(server, key, "POST", "/v1/files", multipart(("file", b"{}", "a.jsonl")), mp), 400, "purpose")
    assert_envelope(*call(server, key, "POST", "/v1/files",
                          multipart(("purpose", b"fine-tune", None), ("file", b"{}", "a.jsonl")), mp), 400, "purpose")
    # nothing was stored by the refused uploads
    status, _, body = call(server, key, "GET", "/v1/files")
    assert json.loads(body)["data"] == []


def test_oversized_upload_is_refused_by_declared_length(server, new_key):
    """A declared body over the limit is refused with 413 before any of it is read."""
    import socket
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall((f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {new_key()}\r\n"
                   "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 300000000\r\n\r\n").encode())
        s.sendall(b"--b\r\n")
        data = s.recv(65536).decode()
    assert data.startswith("HTTP/1.1 413"), data[:200]
    assert '"invalid_request_error"' in data


def test_oversized_streamed_upload_is_refused(server, new_key, db):
    """Chunked upload with no declared length: counted while streamed, 413 past 200 MB,
    nothing stored, memory bounded."""
    import http.client
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    key = new_key()
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    boundary = "bb"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n\r\n").encode()
    block = (b'{"custom_id":"x","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}' + b" " * 900
             + b"\n") * 1024  # ~1 MB

    def body():
        yield head
        for _ in range(205):
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    blobs_before = db.fetchval("SELECT count(*) FROM file_blobs")
    conn.putrequest("POST", "/v1/files")
    conn.putheader("Authorization", f"Bearer {key}")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for piece in body():
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before we finish sending
    r = conn.getresponse()
    assert r.status == 413
    assert json.loads(r.read())["error"]["param"] == "file"
    assert db.fetchval("SELECT count(*) FROM file_blobs") == blobs_before
    status, _, listed = call(server, key, "GET", "/v1/files")
    assert json.loads(listed)["data"] == []


def test_stalled_uploads_do_not_starve_the_api(server, new_key):
    """Clients that start an upload and stop sending hold upload slots, not the whole pool."""
    import socket
    import time as _time
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    key = new_key()
    socks = []
    try:
        for _ in range(25):
            s = socket.create_connection((host, int(port)))
            s.sendall((f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                       "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
                       "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n{").encode())
            socks.append(s)
        _time.sleep(0.5)
        t0 = _time.time()
        status, _, body = call(server, key, "GET", "/v1/batches")
        assert status == 200 and _time.time() - t0 < 5
    finally:
        for s in socks:
            s.close()


# --- OpenAI's codes and words, through the official client ------------------------------------

ALL_ENDPOINTS = ("'/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/v1/responses', "
                 "'/v1/moderations', '/v1/images/generations', '/v1/images/edits', and '/v1/videos'")


def _upload(client) -> str:
    return client.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch").id


@pytest.mark.parametrize("kwargs,param,message", [
    (dict(endpoint="/v1/images/variations"), "endpoint",
     f"Invalid value: '/v1/images/variations'. Supported values are: {ALL_ENDPOINTS}."),
    (dict(completion_window="48h"), "completion_window", "Invalid value: '48h'. Supported values are: '24h'."),
])
def test_a_bad_enumeration_at_create_is_invalid_value(client, kwargs, param, message):
    args = dict(input_file_id=_upload(client), endpoint="/v1/chat/completions", completion_window="24h") | kwargs
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(**args)
    assert (e.value.status_code, e.value.code, e.value.param) == (400, "invalid_value", param)
    assert e.value.body["message"] == message and e.value.type == "invalid_request_error"


def test_a_bad_purpose_or_order_is_invalid_value(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="fine-tune")
    assert (e.value.code, e.value.param) == ("invalid_value", "purpose")
    assert e.value.body["message"] == "Invalid value: 'fine-tune'. Supported values are: 'batch'."
    with pytest.raises(openai.BadRequestError) as e:
        client.files.list(order="sideways")   # type: ignore[arg-type]
    assert (e.value.code, e.value.param) == ("invalid_value", "order")
    assert e.value.body["message"] == "Invalid value: 'sideways'. Supported values are: 'asc' and 'desc'."


@pytest.mark.parametrize("endpoint,body", [
    ("/v1/images/generations", {"model": "gpt-image-1", "prompt": "a red fox"}),
    ("/v1/images/edits", {"model": "gpt-image-1", "prompt": "add a hat", "image": "https://example.invalid/a.png"}),
    ("/v1/videos", {"model": "sora-2", "prompt": "a red fox running"}),
])
def test_the_new_endpoints_are_accepted(client, endpoint, body):
    line = {"custom_id": "r1", "method": "POST", "url": endpoint, "body": body}
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl([line]))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")   # type: ignore[arg-type]
    assert b.endpoint == endpoint and b.status == "validating"
    client.batches.cancel(b.id)


def test_a_404_says_what_was_not_found_and_names_the_id(client):
    for call, message in [
        (lambda: client.batches.retrieve("batch_nope"), "No batch found with id 'batch_nope'."),
        (lambda: client.batches.cancel("batch_nope"), "No batch found with id 'batch_nope'."),
        (lambda: client.files.retrieve("file-nope"), "No file found with id 'file-nope'."),
        (lambda: client.files.content("file-nope"), "No file found with id 'file-nope'."),
        (lambda: client.files.delete("file-nope"), "No file found with id 'file-nope'."),
    ]:
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.body["message"] == message and e.value.code is None
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    assert e.value.param == "input_file_id" and e.value.body["message"].startswith("No file found with id 'file-nope'.")
