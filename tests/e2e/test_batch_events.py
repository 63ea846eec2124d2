"""GET /v1/batches/{id}/events: JSON pages over a batch's events, and the server-sent-events feed
that follows a running batch until its terminal event, also when another process writes the
events, and that ends when the client goes away or the server shuts down."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import openai
import pytest

from conftest import chat_line, free_port, jsonl, wait_status


def slow_batch(client: openai.OpenAI, n: int = 3):
    """A batch whose requests stay in flight for a minute at the mock: it sits in in_progress
    until it is cancelled."""
    lines = [chat_line(i, mock={"latency_ms": 60000}) for i in range(n)]
    f = client.files.create(file=("slow.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, b.id, {"in_progress"})
    return b


def get(base_url: str, key: str, path: str, **headers) -> tuple[int, dict]:
    req = urllib.request.Request(base_url + path, headers={"Authorization": f"Bearer {key}", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def all_events(base_url: str, key: str, batch_id: str) -> list[dict]:
    status, page = get(base_url, key, f"/batches/{batch_id}/events?limit=1000")
    assert status == 200 and not page["has_more"]
    return page["data"]


class Feed:
    """An SSE reader on its own thread (http.client, no SSE library): the messages it got, the
    comments it saw, and whether the server closed the stream."""

    def __init__(self, base_url: str, key: str, batch_id: str, query: str = "", **headers):
        u = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        self.conn.request("GET", f"{u.path}/batches/{batch_id}/events{query}",
                          headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream", **headers})
        self.response = self.conn.getresponse()
        self.messages: list[dict] = []
        self.comments: list[str] = []
        self.closed = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            while True:
                line = self.response.readline()
                if not line:
                    break  # the server ended the stream
                line = line.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments.append(line)
                elif line == "":
                    if fields:
                        self.messages.append({"id": fields["id"], "event": fields["event"],
                                              "data": json.loads(fields["data"])})
                    fields = {}
                else:
                    name, _, value = line.partition(": ")
                    assert name not in fields, f"field {name} twice in one message"
                    fields[name] = value
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.closed.set()

    def wait_for(self, predicate, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while not predicate(self.messages):
            assert not self.closed.is_set() or predicate(self.messages), f"closed early: {self.types()}"
            assert time.time() < deadline, f"timed out; got {self.types()}"
            time.sleep(0.05)

    def wait_closed(self, timeout: float) -> None:
        assert self.closed.wait(timeout), f"stream still open after {timeout}s; got {self.types()}"
        assert self.error is None, repr(self.error)

    def types(self) -> list[str]:
        return [m["event"] for m in self.messages]

    def close(self) -> None:
        self.conn.close()


def feeds_closed(proc) -> list[str]:
    """The reasons the process logged for the feeds it closed."""
    reasons = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "batch_events_stream_closed":
                reasons.append(entry["reason"])
    return reasons


def check_stream_against_log(feed: Feed, base_url: str, key: str, batch_id: str) -> None:
    events = all_events(base_url, key, batch_id)
    assert [m["data"] for m in feed.messages] == events
    assert [m["id"] for m in feed.messages] == [e["id"] for e in events]
    assert [m["event"] for m in feed.messages] == [e["type"] for e in events]
    assert feed.types()[-1] == "batch_cancelled"


def test_json_pages_over_a_cancelled_batch(client, server, new_key):
    key = client.api_key
    b = slow_batch(client)
    client.batches.cancel(b.id)
    wait_status(client, b.id, {"cancelled"})

    events = all_events(server.base_url, key, b.id)
    types = [e["type"] for e in events]
    assert types[0] == "batch_created" and types[-1] == "batch_cancelled"
    assert types.index("batch_validated") < types.index("batch_cancelling") < types.index("batch_cancelled")
    assert types.count("request_failed") == 3
    positions = [int(e["id"]) for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    for e in events:
        assert e["object"] == "batch.event" and isinstance(e["created_at"], float)
        assert abs(e["created_at"] - time.time()) < 600
        assert e["data"]["type"] == e["type"]  # the event itself, as the log holds it
    created = events[0]["data"]
    assert created["batch_id"] == b.id and created["input_file_id"] == b.input_file_id
    outcomes = [e["data"] for e in events if e["type"] == "request_failed"]
    assert sorted(o["custom_id"] for o in outcomes) == ["req-0", "req-1", "req-2"]
    assert {o["error_code"] for o in outcomes} == {"batch_cancelled"}

    # pages of 2, joined, are the whole list; the envelope says where each page starts and ends
    joined, after, pages = [], None, 0
    while True:
        status, page = get(server.base_url, key, f"/batches/{b.id}/events?limit=2"
                                                  + (f"&after={after}" if after else ""))
        assert status == 200 and page["object"] == "list" and 1 <= len(page["data"]) <= 2
        assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
        joined += page["data"]
        pages += 1
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert joined == events and pages == (len(events) + 1) // 2
    status, page = get(server.base_url, key, f"/batches/{b.id}/events?after={events[-1]['id']}")
    assert status == 200 and page["data"] == [] and page["first_id"] is None and not page["has_more"]

    # another project: the same 404 as for the batch itself, and as for an id that never existed
    other = new_key()
    status, body = get(server.base_url, other, f"/batches/{b.id}/events")
    assert status == 404
    assert get(server.base_url, other, f"/batches/{b.id}")[1] == body
    assert get(server.base_url, key, "/batches/batch_nope/events")[1]["error"]["message"] == \
        body["error"]["message"].replace(b.id, "batch_nope")
    status, _ = get(server.base_url, other, f"/batches/{b.id}/events", Accept="text/event-stream")
    assert status == 404  # the feed checks the owner before it opens

    for query, param in (("?limit=0", "limit"), ("?limit=1001", "limit"), ("?after=x", "after"),
                         ("?after=-1", "after")):
        status, body = get(server.base_url, key, f"/batches/{b.id}/events{query}")
        assert status == 400 and body["error"]["param"] == param, query


def test_feed_follows_a_running_batch_until_cancelled(client, server):
    key = client.api_key
    b = slow_batch(client)
    feed = Feed(server.base_url, key, b.id)
    try:
        assert feed.response.status == 200
        assert feed.response.getheader("Content-Type").startswith("text/event-stream")
        feed.wait_for(lambda ms: "batch_started" in [m["event"] for m in ms])
        time.sleep(0.5)
        assert not feed.closed.is_set()  # in_progress: the feed waits for more
        # the cancel comes from another thread, over the official client
        threading.Thread(target=client.batches.cancel, args=(b.id,)).start()
        feed.wait_closed(90)
    finally:
        feed.close()
    assert client.batches.retrieve(b.id).status == "cancelled"
    check_stream_against_log(feed, server.base_url, key, b.id)
    assert feed.types()[:3] == ["batch_created", "batch_validated", "batch_started"]

    # a terminal batch: every event, then the end at once; resuming skips what was seen
    events = all_events(server.base_url, key, b.id)
    again = Feed(server.base_url, key, b.id)
    again.wait_closed(10)
    assert [m["data"] for m in again.messages] == events
    resumed = Feed(server.base_url, key, b.id, **{"Last-Event-ID": events[1]["id"]})
    resumed.wait_closed(10)
    assert [m["data"] for m in resumed.messages] == events[2:]
    by_query = Feed(server.base_url, key, b.id, f"?after={events[2]['id']}")
    by_query.wait_closed(10)
    assert [m["data"] for m in by_query.messages] == events[3:]
    # the header wins over the query: a reconnecting EventSource repeats the first URL
    both = Feed(server.base_url, key, b.id, f"?after={events[0]['id']}", **{"Last-Event-ID": events[-2]["id"]})
    both.wait_closed(10)
    assert [m["data"] for m in both.messages] == events[-1:]


def test_a_feed_ends_within_5_seconds_of_its_key_being_revoked(server, new_key, database_url, db):
    """SPEC §8: a revoked key is refused within 5 s, also by a feed it opened before: it would
    otherwise stream the project's events for as long as the batch runs (up to its window)."""
    import asyncio

    import asyncpg

    from eventbatch import api_keys, batches, ids

    async def as_operator(command):
        conn = await asyncpg.connect(database_url)
        try:
            await command(conn)
        finally:
            await conn.close()

    key = new_key()
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=60)
    b = slow_batch(client)
    feed = Feed(server.base_url, key, b.id)
    try:
        feed.wait_for(lambda ms: "batch_started" in [m["event"] for m in ms])
        key_id = db.fetchval("SELECT key_id FROM api_key_secrets WHERE key_hash = $1", ids.key_hash(key))
        asyncio.run(as_operator(lambda conn: api_keys.revoke_key(conn, key_id)))
        start = time.time()
        feed.wait_closed(10)
        assert time.time() - start < 5, time.time() - start
        assert db.fetchval("SELECT status FROM batch_view WHERE id = $1", b.id) == "in_progress"
        assert "key_revoked" in feeds_closed(server)
    finally:
        feed.close()
        # The key, not the batch, was revoked: the batch would run on. End it (any process settles it).
        asyncio.run(as_operator(lambda conn: batches.cancel_batch(conn, b.id)))


@pytest.mark.slow
def test_feed_from_an_api_process_while_another_process_writes(client, server, start_proc):
    key = client.api_key
    port = free_port()
    start_proc("api", "--port", str(port), http_port=port)
    api_url = f"http://127.0.0.1:{port}/v1"
    b = slow_batch(client)
    feed = Feed(api_url, key, b.id)
    try:
        feed.wait_for(lambda ms: "batch_started" in [m["event"] for m in ms])
        client.batches.cancel(b.id)  # through the `serve` process: the api process only reads
        feed.wait_closed(90)
    finally:
        feed.close()
    check_stream_against_log(feed, api_url, key, b.id)


@pytest.mark.slow
def test_feed_ends_when_the_client_leaves_or_the_server_stops(client, server, start_proc):
    key = client.api_key
    port = free_port()
    api = start_proc("api", "--port", str(port), http_port=port)
    api_url = f"http://127.0.0.1:{port}/v1"
    b = slow_batch(client)
    try:
        leaving = Feed(api_url, key, b.id)
        leaving.wait_for(lambda ms: len(ms) >= 3)
        leaving.close()
        deadline = time.time() + 10
        while "client_gone" not in feeds_closed(api):
            assert time.time() < deadline, api.log()
            time.sleep(0.1)

        staying = Feed(api_url, key, b.id)
        staying.wait_for(lambda ms: len(ms) >= 3)
        start = time.time()
        assert api.stop() == 0
        staying.wait_closed(10)
        assert time.time() - start < 10  # not held until the shutdown timeout
        staying.close()
        assert feeds_closed(api) == ["client_gone", "shutdown"]
    finally:
        client.batches.cancel(b.id)
        wait_status(client, b.id, {"cancelled"}, timeout=90)


async def test_feed_sends_keepalives_in_silence(client, database_url, monkeypatch):
    """In-process, with a short keepalive interval: a quiet feed still sends comment lines, so
    proxies and load balancers do not close it as idle."""
    import asyncio

    import asyncpg
    from aiohttp.test_utils import TestClient, TestServer

    from eventbatch.api import batch_events
    from eventbatch.api.app import create_app
    from eventbatch.config import load_settings

    monkeypatch.setattr(batch_events, "KEEPALIVE_SECONDS", 0.3)
    b = slow_batch(client)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with TestClient(TestServer(create_app(load_settings({}), pool))) as http:
            async with http.get(f"/v1/batches/{b.id}/events",
                                headers={"Authorization": f"Bearer {client.api_key}",
                                         "Accept": "text/event-stream"}) as r:
                assert r.status == 200 and r.headers["Cache-Control"] == "no-cache"
                lines: list[bytes] = []
                while lines.count(b": keepalive\n") < 2:
                    lines.append(await asyncio.wait_for(r.content.readline(), 5))
                assert lines[0].startswith(b"id: ") and b"event: batch_created\n" in lines
    finally:
        await pool.close()
        client.batches.cancel(b.id)
    wait_status(client, b.id, {"cancelled"}, timeout=90)
