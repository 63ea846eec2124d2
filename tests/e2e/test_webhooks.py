"""Webhooks (SPEC §12.4): endpoints registered with `eventbatch webhooks add`, a real HTTP
receiver on loopback, signatures checked with the Standard Webhooks reference package."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import threading
import time
import uuid

import openai
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from conftest import ROOT, base_env, chat_line, free_port, jsonl, said_lines, slow_line, start_server, wait_status


class Receiver:
    """An HTTP server on loopback, on a thread of its own: records every POST, and answers each
    path as planned for it (then 200): a status, ("slow", seconds) to answer 200 that late, or
    ("huge", bytes) to stream a 200 answer that long (how much of it went out: .sent)."""

    def __init__(self):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.received: list[tuple[str, dict, bytes]] = []
        self.plan: dict[str, list] = {}
        self.sent: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self):
        app = web.Application()
        app.router.add_post("/{name}", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            self.received.append((request.path, dict(request.headers), body))
            planned = self.plan.get(request.path) or []
            step = planned.pop(0) if planned else 200
        match step:
            case ("slow", seconds):
                await asyncio.sleep(seconds)
                return web.Response(text="ok")
            case ("huge", size):
                response = web.StreamResponse()
                await response.prepare(request)
                piece, sent = b"x" * 65536, 0
                try:
                    while sent < size:
                        await response.write(piece)
                        sent += len(piece)
                        self.sent[request.path] = sent
                except (ConnectionResetError, ConnectionError):
                    return response
                await response.write_eof()
                return response
        return web.Response(status=step, text="ok" if step < 300 else "receiver error")

    def at(self, path: str) -> list[tuple[dict, bytes]]:
        with self._lock:
            return [(h, b) for p, h, b in self.received if p == path]

    def wait(self, path: str, count: int, timeout: float = 30.0) -> list[tuple[dict, bytes]]:
        deadline = time.time() + timeout
        while len(got := self.at(path)) < count:
            assert time.time() < deadline, f"{path}: {len(got)} of {count} deliveries after {timeout}s"
            time.sleep(0.05)
        return got

    def close(self):
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def hooked(start_proc, mock, fresh_db):
    """A server of its own database (no other worker sends its deliveries) that retries fast."""
    database = fresh_db()
    server = start_server(start_proc, mock.base_url, db_url=database.url, EVENTBATCH_WEBHOOK_BACKOFF_SECONDS="0.2",
                          EVENTBATCH_WEBHOOK_TIMEOUT_SECONDS="2")
    server.db = database
    return server


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eventbatch", *args], cwd=ROOT, env=base_env(database_url),
                          capture_output=True, text=True, timeout=120)


def add_endpoint(hooked, project: str, url: str, *extra: str) -> tuple[str, str]:
    r = cli(hooked.db.url, "webhooks", "add", "--project", project, "--url", url, *extra)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    endpoint_id = lines[0].split()[3]
    return endpoint_id, lines[-1]


def project_client(hooked, new_key, project: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=hooked.base_url, api_key=new_key(project, db_url=hooked.db.url), max_retries=0,
                         timeout=60)


def run_batch(client, lines) -> str:
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id


def test_a_finished_batch_is_posted_to_its_projects_endpoint_signed(hooked, receiver, new_key):
    project = f"hooks-{uuid.uuid4().hex[:8]}"
    endpoint_id, secret = add_endpoint(hooked, project, receiver.base + "/done")
    assert endpoint_id.startswith("whep_") and secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    client = project_client(hooked, new_key, project)
    batch_id = run_batch(client, [chat_line(i) for i in range(2)])
    b = wait_status(client, batch_id, {"completed"})

    [(headers, body)] = receiver.wait("/done", 1)
    event = Webhook(secret).verify(body, headers)   # raises unless signed per Standard Webhooks
    assert event == {"id": event["id"], "object": "event", "type": "batch.completed",
                     "created_at": event["created_at"], "data": {"id": batch_id}}
    assert list(json.loads(body)) == ["id", "object", "type", "created_at", "data"]
    assert event["id"].startswith("evt_") and abs(event["created_at"] - b.completed_at) <= 1
    assert headers["webhook-id"].startswith("msg_") and headers["webhook-signature"].startswith("v1,")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    with pytest.raises(Exception):   # another secret does not verify it
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)
    time.sleep(1.5)
    assert len(receiver.at("/done")) == 1   # delivered: not sent again
    assert hooked.db.fetchval("SELECT state FROM webhook_deliveries WHERE batch_id = $1", batch_id) == "delivered"


def test_a_delivery_answered_500_is_delivered_again_and_replay_shows_every_attempt(hooked, receiver, new_key):
    project = f"hooks-{uuid.uuid4().hex[:8]}"
    receiver.plan["/flaky"] = [500, 503]
    _, secret = add_endpoint(hooked, project, receiver.base + "/flaky", "--events", "batch.failed,batch.completed")
    client = project_client(hooked, new_key, project)
    batch_id = run_batch(client, [b"not json"])     # fails at validation: batch.failed
    wait_status(client, batch_id, {"failed"})

    got = receiver.wait("/flaky", 3)
    ids = {h["webhook-id"] for h, _ in got}
    assert len(ids) == 1 and len({b for _, b in got}) == 1   # one delivery, the same body each time
    for headers, body in got:
        assert Webhook(secret).verify(body, headers)["type"] == "batch.failed"
    time.sleep(1.0)
    assert len(receiver.at("/flaky")) == 3

    r = cli(hooked.db.url, "replay", batch_id, "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    summary = rows.pop()["summary"]
    events = [x["event"] for x in rows]
    assert events == ["batch_created", "batch_validation_failed", "webhook_delivery_owed",
                      "webhook_attempted", "webhook_attempted", "webhook_attempted"]
    attempts = [x for x in rows if x["event"] == "webhook_attempted"]
    assert [(a["attempts"], a["status_code"]) for a in attempts] == [(1, 500), (2, 503), (3, 200)]
    assert "next attempt at" in attempts[0]["detail"] and attempts[2]["detail"].startswith("delivered")
    assert {x["delivery_id"] for x in rows if x["event"].startswith("webhook_")} == ids
    assert "batch.failed" in rows[2]["detail"] and receiver.base + "/flaky" in rows[2]["detail"]
    assert summary["status"] == "failed" and summary["webhook_attempts"] == 3
    text = cli(hooked.db.url, "replay", batch_id).stdout.splitlines()
    assert sum("webhook_attempted" in t for t in text) == 3 and text[-1].endswith("; 3 webhook attempt(s)")
    # the deliveries' streams are in the log beside the batch's: the views still rebuild from it
    verify = cli(hooked.db.url, "projections", "rebuild", "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_an_endpoint_hears_only_its_projects_batches_and_the_events_it_asked_for(hooked, receiver, new_key):
    mine, other = f"hooks-{uuid.uuid4().hex[:8]}", f"hooks-{uuid.uuid4().hex[:8]}"
    add_endpoint(hooked, mine, receiver.base + "/cancels", "--events", "batch.cancelled")
    other_client, my_client = project_client(hooked, new_key, other), project_client(hooked, new_key, mine)
    theirs = run_batch(other_client, [chat_line(0)])
    wait_status(other_client, theirs, {"completed"})
    completed = run_batch(my_client, [chat_line(0)])        # completed: not asked for
    wait_status(my_client, completed, {"completed"})
    cancelled = run_batch(my_client, [slow_line(0, 30)])
    wait_status(my_client, cancelled, {"in_progress"})
    my_client.batches.cancel(cancelled)
    wait_status(my_client, cancelled, {"cancelled"})

    [(headers, body)] = receiver.wait("/cancels", 1)
    assert json.loads(body)["type"] == "batch.cancelled" and json.loads(body)["data"] == {"id": cancelled}
    time.sleep(1.5)
    assert len(receiver.at("/cancels")) == 1
    assert not any(theirs.encode() in b or completed.encode() in b for _, _, b in receiver.received)
    assert hooked.db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE batch_id = ANY($1)",
                              [theirs, completed]) == 0


def test_webhooks_list_and_remove(hooked, receiver, new_key):
    project = f"hooks-{uuid.uuid4().hex[:8]}"
    endpoint_id, secret = add_endpoint(hooked, project, receiver.base + "/removed")
    listed = cli(hooked.db.url, "webhooks", "list", "--project", project)
    assert listed.returncode == 0
    [line] = listed.stdout.splitlines()
    assert endpoint_id in line and receiver.base + "/removed" in line and "batch.expired" in line
    assert secret not in cli(hooked.db.url, "webhooks", "list").stdout

    # removed: a batch that ends later is owed nothing
    r = cli(hooked.db.url, "webhooks", "remove", endpoint_id)
    assert r.returncode == 0 and endpoint_id in r.stdout
    assert endpoint_id not in cli(hooked.db.url, "webhooks", "list").stdout
    client = project_client(hooked, new_key, project)
    wait_status(client, run_batch(client, [chat_line(0)]), {"completed"})
    time.sleep(1.5)
    assert receiver.at("/removed") == []

    for args, words in ((("remove", endpoint_id), endpoint_id),
                        (("add", "--project", project, "--url", "ftp://example.com/x"), "--url"),
                        (("add", "--project", project, "--url", receiver.base, "--events", "batch.done"), "--events")):
        r = cli(hooked.db.url, "webhooks", *args)
        assert r.returncode == 2 and words in r.stderr, r.stderr
        assert len(said_lines(r.stderr)) == 1 and "Traceback" not in r.stderr


def test_an_attempt_has_a_time_limit_and_reads_a_capped_answer(hooked, receiver, new_key):
    project = f"hooks-{uuid.uuid4().hex[:8]}"
    receiver.plan["/slow"] = [("slow", 6)]
    receiver.plan["/huge"] = [("huge", 64 * 1024 * 1024)]
    add_endpoint(hooked, project, receiver.base + "/slow")
    add_endpoint(hooked, project, receiver.base + "/huge")
    client = project_client(hooked, new_key, project)
    batch_id = run_batch(client, [chat_line(0)])
    wait_status(client, batch_id, {"completed"})

    receiver.wait("/slow", 2, timeout=30)      # cut off after 2 s, then sent again
    [_] = receiver.wait("/huge", 1)
    deadline = time.time() + 30
    while hooked.db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE batch_id = $1 AND state = 'delivered'",
                             batch_id) < 2:
        assert time.time() < deadline
        time.sleep(0.1)
    # The 64 MiB answer was not read: the worker hung up after its cap (the receiver's writes
    # stop once the socket buffers fill).
    assert receiver.sent["/huge"] < 16 * 1024 * 1024
    rows = [json.loads(x) for x in cli(hooked.db.url, "replay", batch_id, "--json").stdout.splitlines()[:-1]]
    attempts = [x for x in rows if x["event"] == "webhook_attempted"]
    assert len(attempts) == 3
    slow = [x for x in attempts if "no answer within 2s" in x["detail"]]
    assert len(slow) == 1 and "status_code" not in slow[0] and "next attempt at" in slow[0]["detail"]
    assert sorted(x.get("status_code") for x in attempts if x is not slow[0]) == [200, 200]


def test_adding_an_endpoint_for_a_project_no_key_belongs_to_says_so(hooked, receiver, new_key):
    project = f"hooks-{uuid.uuid4().hex[:8]}"
    r = cli(hooked.db.url, "webhooks", "add", "--project", project, "--url", receiver.base + "/early")
    assert r.returncode == 0, r.stderr                 # added: keys may come later
    [note] = said_lines(r.stderr)
    assert f"no API key belongs to project '{project}'" in note and "keys create --project" in note
    new_key(project, db_url=hooked.db.url)
    r = cli(hooked.db.url, "webhooks", "add", "--project", project, "--url", receiver.base + "/later")
    assert r.returncode == 0 and said_lines(r.stderr) == [], r.stderr
