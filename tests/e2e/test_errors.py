"""Bad requests get OpenAI-style errors, never a 500, an HTML page or a traceback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest


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
