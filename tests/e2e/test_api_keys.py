"""API keys (SPEC §8): `eventbatch keys create | list | revoke`; a revoked key is refused by every
running API process within 5 s; keys' lives are events in the log (never the key, nor its
hash) and the table api_keys a view rebuilt from them; guessing keys is throttled per address."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import asyncpg
import pytest

from conftest import ROOT, base_env, said_lines, start_server
from eventbatch import events as ev, ids


def keys_cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eventbatch", "keys", *args], cwd=ROOT, capture_output=True,
                          text=True, env=base_env(database_url), timeout=60)


def status_of(base_url: str, key: str) -> int:
    req = urllib.request.Request(base_url + "/batches?limit=1", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def listed(database_url: str, *args: str) -> list[dict]:
    done = keys_cli(database_url, "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_create_list_revoke_from_the_command_line(server, database_url, db):
    project = f"proj-{uuid.uuid4().hex[:8]}"
    made = keys_cli(database_url, "create", "--project", project)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]           # the key is the last line printed
    [entry] = listed(database_url, "--project", project)
    assert entry["id"].startswith("key_") and entry["project"] == project and entry["hint"] == key[-4:]
    assert entry["revoked_at"] is None and entry["last_used_at"] is None
    assert abs(entry["created_at"] - time.time()) < 60
    assert status_of(server.base_url, key) == 200
    [entry] = listed(database_url, "--project", project)
    assert entry["last_used_at"] is not None and abs(entry["last_used_at"] - time.time()) < 60

    table = keys_cli(database_url, "list", "--project", project)
    assert table.returncode == 0 and entry["id"] in table.stdout
    assert "LAST USED" in table.stdout and "REVOKED" in table.stdout
    everything = keys_cli(database_url, "list").stdout + table.stdout
    assert key not in everything and ids.key_hash(key) not in everything   # never the key, nor its hash

    revoked = keys_cli(database_url, "revoke", entry["id"])
    assert revoked.returncode == 0 and entry["id"] in revoked.stdout, revoked.stderr
    [entry] = listed(database_url, "--project", project)
    assert entry["revoked_at"] is not None
    again = keys_cli(database_url, "revoke", entry["id"])
    assert again.returncode == 0 and "already revoked" in again.stdout
    unknown = keys_cli(database_url, "revoke", "key_nosuchkey")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert len(said_lines(unknown.stderr)) == 1 and "keys list" in unknown.stderr

    # the log holds the key's life, never the key or its hash
    rows = db.fetch("SELECT type, version, data FROM events WHERE stream = $1 ORDER BY version",
                    f"key-{entry['id']}")
    assert [(r["type"], r["version"]) for r in rows] == [("api_key_created", 1), ("api_key_revoked", 2)]
    created = json.loads(ev.plain(rows[0]["data"]))
    assert created["project"] == project and created["key_id"] == entry["id"]
    secrets = (key.encode(), ids.key_hash(key).encode())
    assert not db.fetchval("SELECT count(*) FROM events WHERE position($1 IN data) > 0 OR position($2 IN data) > 0",
                           *secrets)


def test_a_revoked_key_is_refused_by_every_process_within_5_seconds(server, start_proc, mock, database_url):
    apis = [server, start_server(start_proc, mock.base_url, role="api"), start_server(start_proc, mock.base_url,
                                                                                        role="api")]
    project = f"proj-{uuid.uuid4().hex[:8]}"
    made = keys_cli(database_url, "create", "--project", project)
    key = made.stdout.strip().splitlines()[-1]
    [entry] = listed(database_url, "--project", project)
    refused_at: dict[int, float] = {}
    stop, revoking = threading.Event(), threading.Event()

    def hammer(i: int, base_url: str) -> None:
        # The key in use the whole time, so every process has it cached when it is revoked.
        while not stop.is_set():
            code = status_of(base_url, key)
            if code == 401 and revoking.is_set():
                refused_at[i] = time.monotonic()
                return
            assert code == 200, code
            time.sleep(0.05)

    threads = [threading.Thread(target=hammer, args=(i, api.base_url), daemon=True) for i, api in enumerate(apis)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    revoking.set()
    done = keys_cli(database_url, "revoke", entry["id"])
    assert done.returncode == 0, done.stderr
    committed = time.monotonic()     # the revocation committed before the command returned
    for t in threads:
        t.join(8)
    stop.set()
    assert sorted(refused_at) == [0, 1, 2], refused_at
    late = {i: round(at - committed, 2) for i, at in refused_at.items()}
    assert max(late.values()) < 5.0, late


def test_the_keys_view_is_rebuilt_from_the_log(server, new_key, database_url):
    from eventbatch import rebuild

    key = new_key()

    async def go():
        conn = await asyncpg.connect(database_url)
        try:
            key_id = await conn.fetchval("SELECT key_id FROM api_key_secrets WHERE key_hash = $1", ids.key_hash(key))
            await conn.execute("DELETE FROM api_keys WHERE id = $1", key_id)
            _, diffs = await rebuild.verify(conn)
            missing = [d for d in diffs if key_id in d]
            pool = await asyncpg.create_pool(database_url, min_size=2, max_size=2)
            try:
                await rebuild.rebuild(pool)
            finally:
                await pool.close()
            _, after = await rebuild.verify(conn)
            return missing, after
        finally:
            await conn.close()

    missing, after = asyncio.run(go())
    assert missing and "missing from the view" in missing[0]
    assert after == []
    time.sleep(2.5)   # past the key cache, so the answer comes from the rebuilt view
    assert status_of(server.base_url, key) == 200


@pytest.fixture(scope="module")
def lone_api(start_proc, mock):
    """An API process of its own: its failure throttle is not shared with other tests."""
    return start_server(start_proc, mock.base_url, role="api")


def test_guessing_keys_is_throttled_per_address(lone_api, new_key):
    import concurrent.futures

    guesses = [ids.api_key() for _ in range(300)]      # well formed: each would need a lookup
    answers: list[tuple[int, dict, bytes]] = []

    def guess(key: str):
        req = urllib.request.Request(lone_api.base_url + "/files", headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(guess, guesses))
    took = time.monotonic() - start
    codes = [a[0] for a in answers]
    assert set(codes) <= {401, 429}, set(codes)
    looked_up = codes.count(401)             # every 401 cost one lookup; a 429 none
    assert looked_up <= 20 + 2 * took + 2, (looked_up, took)
    throttled = [a for a in answers if a[0] == 429]
    assert len(throttled) >= 250
    status, headers, body = throttled[0]
    err = json.loads(body)["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded" and err["message"]
    assert int(headers["Retry-After"]) >= 1
    # the address gets its tries back with time: a real key works a few seconds later
    key = new_key()
    deadline = time.monotonic() + 5
    while status_of(lone_api.base_url, key) != 200:
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_bad_keys_from_an_address_do_not_lock_its_good_keys_out(start_proc, mock, new_key):
    """Behind a proxy or NAT every client shares one address: one client flooding bad keys must not
    get the others 429 (the audit's S8). A process of its own, so its throttle starts full and
    every key is uncached there; the good keys are polled past the key cache's lifetime."""
    from eventbatch.api.auth import CACHE_SECONDS, DIRECTORY_SECONDS
    api = start_server(start_proc, mock.base_url, role="api")
    good = new_key()
    stop = threading.Event()
    flood: list[int] = []

    def attack():
        while not stop.is_set():
            flood.append(status_of(api.base_url, ids.api_key()))   # well formed: each would need a lookup

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    for t in attackers:
        t.start()
    try:
        deadline = time.monotonic() + 1
        while flood.count(429) < 20 and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        assert flood.count(429) >= 20, "the flood is not throttled"
        victim: list[int] = []
        newcomer, newcomer_codes = new_key(), []   # created mid-flood, never seen by this process
        created = time.monotonic()
        end = created + 3 * CACHE_SECONDS + 1
        while time.monotonic() < end:
            victim.append(status_of(api.base_url, good))
            newcomer_codes.append((time.monotonic() - created, status_of(api.base_url, newcomer)))
            time.sleep(0.4)
    finally:
        stop.set()
        for t in attackers:
            t.join()
    assert victim and set(victim) == {200}, victim
    # a key created during the flood gets in once the directory of good keys is reloaded
    assert {code for at, code in newcomer_codes if at > DIRECTORY_SECONDS + 0.5} == {200}, newcomer_codes
    # bad keys still cost few lookups: every 401 was one, a 429 none
    assert set(flood) <= {401, 429} and flood.count(429) > 10 * flood.count(401), (flood.count(401), len(flood))


@pytest.mark.parametrize("command", [("keys", "create"), ("webhooks", "add", "--url", "http://127.0.0.1:9/h")])
@pytest.mark.parametrize("project,words", [("a\x01b", "control characters"), ("line\nbreak", "control characters"),
                                           ("p" * 5000, "5000 characters"), ("  ", "must not be empty")])
def test_a_bad_project_name_is_refused_in_one_line(database_url, command, project, words):
    r = subprocess.run([sys.executable, "-m", "eventbatch", *command, "--project", project], cwd=ROOT,
                       capture_output=True, text=True, env=base_env(database_url), timeout=60)
    assert r.returncode == 2 and words in r.stderr, r.stderr
    assert len(said_lines(r.stderr)) == 1 and "Traceback" not in r.stderr
    assert not [k for k in listed(database_url) if k["project"] == project.strip()]
