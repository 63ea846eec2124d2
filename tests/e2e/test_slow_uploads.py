"""Slow clients cannot starve others (SPEC §14): an upload writes its pieces in short
transactions as they arrive and holds no connection while the client sends, an upload that
stalls is cut off after the read timeout, and the pieces of uploads that never became a file are
dropped."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import uuid

import openai
import pytest

from conftest import chat_line, jsonl, start_server

READ_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def slow_server(start_proc, mock):
    """A server with a short upload read timeout, so that stalls are cut off within the test."""
    return start_server(start_proc, mock.base_url, EVENTBATCH_UPLOAD_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT))


def host_port(server) -> tuple[str, int]:
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    return host, int(port)


class Trickle(threading.Thread):
    """An upload that sends its head, then one byte every `every` seconds for at most `seconds`
    (bounded: the test ends whatever the server does), and records how it ended."""

    def __init__(self, server, key: str, every: float = 0.5, seconds: float = 8.0, tag: str | None = None):
        super().__init__(daemon=True)
        self.server, self.key, self.every, self.seconds = server, key, every, seconds
        self.tag = tag or "req_trickle_" + uuid.uuid4().hex[:8]
        self.answer = b""
        self.ended_at: float | None = None
        self.started = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        with socket.create_connection(host_port(self.server), timeout=self.seconds + 5) as s:
            s.sendall((f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.key}\r\n"
                       f"x-request-id: {self.tag}\r\n"
                       "Content-Type: multipart/form-data; boundary=tb\r\nContent-Length: 100000\r\n\r\n"
                       "--tb\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
                       "--tb\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.jsonl\"\r\n\r\n"
                       ).encode())
            self.started.set()
            s.settimeout(self.every)
            while time.monotonic() - start < self.seconds:
                try:
                    s.sendall(b"{")
                except OSError:
                    break
                try:
                    got = s.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not got:
                    break
                self.answer += got
                if b"\r\n\r\n" in self.answer:
                    break
            self.ended_at = time.monotonic() - start


def idle_in_transaction(db) -> int:
    return db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'eventbatch' "
                       "AND state = 'idle in transaction'")


def test_twenty_trickling_uploads_leave_other_uploads_working(slow_server, new_key, db):
    trickles = [Trickle(slow_server, new_key()) for _ in range(20)]
    for t in trickles:
        t.start()
    for t in trickles:
        t.started.wait(5)
    time.sleep(1.0)   # all twenty are sending, a byte every half second
    assert idle_in_transaction(db) == 0     # nothing holds a transaction open while its client sends
    client = openai.OpenAI(base_url=slow_server.base_url, api_key=new_key(), max_retries=0, timeout=10)
    data = jsonl([chat_line(i) for i in range(2000)])   # a few pieces of 1 MiB
    start = time.monotonic()
    f = client.files.create(file=("normal.jsonl", io.BytesIO(data)), purpose="batch")
    took = time.monotonic() - start
    assert f.bytes == len(data) and client.files.content(f.id).read() == data
    assert took < 3.0, f"a normal upload took {took:.1f}s beside twenty trickling ones"
    assert sum(t.is_alive() for t in trickles) >= 15   # they were still sending while it ran
    for t in trickles:
        t.join(15)


def test_a_stalled_upload_is_cut_off_and_leaves_nothing(slow_server, new_key, db):
    key = new_key()
    before = db.fetchval("SELECT count(DISTINCT file_id) FROM file_blobs")
    mark = len(slow_server.log())
    t = Trickle(slow_server, key, every=0.5, seconds=READ_TIMEOUT + 6)
    t.start()
    t.join(READ_TIMEOUT + 10)
    assert t.answer.startswith(b"HTTP/1.1 408"), t.answer[:300]
    assert t.ended_at is not None and READ_TIMEOUT - 0.5 <= t.ended_at <= READ_TIMEOUT + 3
    body = json.loads(t.answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["param"] == "file" and "stalled" in body["error"]["message"]
    assert db.fetchval("SELECT count(DISTINCT file_id) FROM file_blobs") <= before
    listed = openai.OpenAI(base_url=slow_server.base_url, api_key=key, max_retries=0).files.list()
    assert listed.data == []
    log = slow_server.log()[mark:]
    assert "Traceback" not in log and "unhandled_error" not in log


def _ended_within(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """What the server sent before closing, and when it closed (the test waits `seconds` at most)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except socket.timeout:
        pytest.fail(f"the server held the connection for over {seconds} s; it sent {got[:200]!r}")
    return got, time.monotonic() - start


def test_a_head_sent_too_slowly_is_cut_off(slow_server, new_key):
    # slowloris: a request line and a header that never ends
    with socket.create_connection(host_port(slow_server)) as s:
        s.sendall(f"GET /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {new_key()}\r\nX-Slow: a".encode())
        got, after = _ended_within(s, READ_TIMEOUT + 10)
    assert got == b"" and READ_TIMEOUT - 0.5 < after


def test_a_json_body_that_stops_short_is_a_408(slow_server, new_key):
    with socket.create_connection(host_port(slow_server)) as s:
        s.sendall((f"POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {new_key()}\r\n"
                   "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                   '{"input_file_id": "f').encode())
        got, after = _ended_within(s, READ_TIMEOUT + 10)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), got[:300]
    assert "did not arrive within" in json.loads(body)["error"]["message"]


def test_a_kept_alive_connection_may_idle_between_requests(slow_server, new_key):
    # the head's limit runs from a request's first byte, not from the last answer
    import http.client
    host, port = host_port(slow_server)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    headers = {"Authorization": f"Bearer {new_key()}"}
    ports = []
    try:
        for _ in range(2):
            conn.request("GET", "/v1/batches", headers=headers)
            ports.append(conn.sock.getsockname()[1])
            r = conn.getresponse()
            assert r.status == 200 and r.read()
            time.sleep(READ_TIMEOUT + 1)
    finally:
        conn.close()
    assert ports[0] == ports[1]        # one connection: it was not closed while it idled


def test_pieces_of_an_upload_that_never_became_a_file_are_dropped(start_proc, mock, db):
    """A process that died mid-upload leaves pieces no file names: the sweep of any API process
    drops them once nothing has added to them for a while (here, pieces from an hour ago)."""
    orphan, fresh = "file-orphan" + uuid.uuid4().hex[:12], "file-inflight" + uuid.uuid4().hex[:12]
    for piece in range(3):
        db.execute("INSERT INTO file_blobs (file_id, piece, data, written_at) "
                   "VALUES ($1, $2, $3, now() - interval '1 hour')", orphan, piece, b"x" * 10)
    db.execute("INSERT INTO file_blobs (file_id, piece, data) VALUES ($1, 0, $2)", fresh, b"y")
    kept = db.fetchval("SELECT count(*) FROM file_blobs b JOIN file_view f ON f.id = b.file_id")
    server = start_server(start_proc, mock.base_url, role="api")
    deadline = time.time() + 15
    while db.fetchval("SELECT count(*) FROM file_blobs WHERE file_id = $1", orphan) and time.time() < deadline:
        time.sleep(0.2)
    assert db.fetchval("SELECT count(*) FROM file_blobs WHERE file_id = $1", orphan) == 0
    assert db.fetchval("SELECT count(*) FROM file_blobs WHERE file_id = $1", fresh) == 1   # may still become a file
    assert db.fetchval("SELECT count(*) FROM file_blobs b JOIN file_view f ON f.id = b.file_id") >= kept
    # Which API process swept them is not asserted: the session's other API processes share this
    # database and sweep it too (every API process runs the sweep).
    server.stop()
    db.execute("DELETE FROM file_blobs WHERE file_id = $1", fresh)


def test_a_connection_kept_alive_after_an_unread_body_may_idle(slow_server, new_key):
    # A body the handler refuses unread is drained by aiohttp; those bytes are no request head,
    # and must not start the head's limit on a connection that then idles between requests.
    import http.client
    host, port = host_port(slow_server)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    headers = {"Authorization": f"Bearer {new_key()}"}
    try:
        conn.request("POST", "/v1/files", body=b"x" * (2 << 20),
                     headers={**headers, "Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        assert r.status == 400 and r.read()
        port_used = conn.sock.getsockname()[1]
        time.sleep(READ_TIMEOUT + 1)
        conn.request("GET", "/v1/batches", headers=headers)
        assert conn.sock.getsockname()[1] == port_used
        r = conn.getresponse()
        assert r.status == 200 and r.read()
    finally:
        conn.close()


def test_an_upload_slower_than_the_limit_in_all_but_within_it_per_mib_completes(slow_server, new_key):
    # the head's limit is the head's: an upload whose body takes longer than it still completes
    key = new_key()
    body = jsonl([chat_line(i) for i in range(12_000)])              # ~1.5 MB, in halves
    head = (b'--tb\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            b'--tb\r\nContent-Disposition: form-data; name="file"; filename="slow.jsonl"\r\n\r\n')
    tail = b"\r\n--tb--\r\n"
    with socket.create_connection(host_port(slow_server), timeout=30) as s:
        s.sendall((f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                   "Content-Type: multipart/form-data; boundary=tb\r\n"
                   f"Content-Length: {len(head) + len(body) + len(tail)}\r\n\r\n").encode())
        time.sleep(0.2)
        s.sendall(head + body[:len(body) // 2])
        time.sleep(READ_TIMEOUT * 0.6)
        s.sendall(body[len(body) // 2:])
        time.sleep(READ_TIMEOUT * 0.6)                                # over the limit since the head
        s.sendall(tail)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)
            assert chunk, f"closed: {answer[:200]!r}"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
