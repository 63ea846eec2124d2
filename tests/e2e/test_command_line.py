"""What a person sees when starting things: the real port, why `serve` stops, a warning for a
missing provider key, and which database a command used (the story of a key made in the wrong
folder's database, then refused by the running server)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

from conftest import ROOT, Proc, free_port, wait_http


def env_for(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBATCH_")}
    env.update({"EVENTBATCH_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **extra})
    return env


def eventbatch(*args, cwd=ROOT, timeout=120, **env):
    env.setdefault("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "eventbatch", *args], cwd=cwd, env=env_for(**env),
                          capture_output=True, text=True, timeout=timeout)


def log_events(proc: Proc, name: str, timeout: float = 60.0) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [json.loads(x) for x in proc.log().splitlines() if x.startswith("{") and f'"{name}"' in x]
        found = [e for e in found if e.get("event") == name]
        if found:
            return found
        if proc.p.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"no {name} in the log:\n{proc.log()}")


def test_serve_port_0_logs_the_port_it_got_and_warns_of_an_empty_upstream_key(tmp_path, database_url, mock):
    proc = Proc(["serve", "--port", "0", "--upstream-url", mock.base_url],
                env_for(EVENTBATCH_DATABASE_URL=database_url), tmp_path / "serve.log")
    try:
        [listening] = log_events(proc, "api_listening")
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/v1", listening["url"])
        assert m and int(m.group(1)) != 0, listening
        with urllib.request.urlopen(listening["url"].removesuffix("/v1") + "/healthz", timeout=5) as r:
            assert r.status == 200
        [warning] = log_events(proc, "upstream_api_key_empty")
        assert warning["level"] == "warning" and "EVENTBATCH_UPSTREAM_API_KEY" in warning["message"]
        [database] = log_events(proc, "database")
        assert database["database"] and "password" not in database["database"]
    finally:
        proc.stop()


def test_serve_without_an_upstream_says_why_before_listening(tmp_path, database_url):
    r = eventbatch("serve", "--port", "0", EVENTBATCH_DATABASE_URL=database_url, timeout=60)
    assert r.returncode == 2
    assert "api_listening" not in r.stderr + r.stdout
    [line] = [x for x in r.stderr.splitlines() if x.strip()]
    assert line.startswith("eventbatch: error: `eventbatch serve` cannot start its worker: no upstream provider")
    assert "EVENTBATCH_UPSTREAM_URL" in line and "eventbatch api" in line


def test_a_command_names_its_database_with_the_password_masked(tmp_path):
    port = free_port()
    url = f"postgresql://someone:s3cret-pass@127.0.0.1:{port}/nothing"
    r = eventbatch("keys", "create", "--project", "x", "--database-url", url, timeout=60)
    assert r.returncode == 2
    assert f"postgresql://someone:***@127.0.0.1:{port}/nothing" in r.stderr
    assert "s3cret-pass" not in r.stderr + r.stdout


def test_keys_create_in_another_folder_warns_and_its_key_is_refused_with_a_reason(tmp_path, mock):
    """The first minutes of a newcomer, as issue 12 found them: `serve` in one folder, `keys create`
    in another. The second names the new database it made and warns of the running one; the key
    made beside the server works, the other gets a 401 that says why."""
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir()
    elsewhere.mkdir()
    port = free_port()
    # PYTHONPATH keeps the code under test importable from another folder
    env = env_for(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    serve = Proc(["serve", "--port", str(port), "--upstream-url", mock.base_url], env, tmp_path / "serve.log",
                 cwd=site)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", serve, timeout=90)
        here = eventbatch("keys", "create", "--project", "demo", cwd=site)
        assert here.returncode == 0, here.stderr
        assert f"database: the embedded Postgres in {site / '.eventbatch'}" in here.stderr
        assert "created now" not in here.stderr and "warning" not in here.stderr
        there = eventbatch("keys", "create", "--project", "demo", cwd=elsewhere)
        assert there.returncode == 0, there.stderr
        assert f"database: the embedded Postgres in {elsewhere / '.eventbatch'} (created now)" in there.stderr
        warning = [x for x in there.stderr.splitlines() if x.startswith("eventbatch: warning:")]
        # (other runs' servers may be listed too, on a shared machine)
        assert warning and str(site / ".eventbatch") in warning[0] and "--data-dir" in warning[0], there.stderr
        good, bad = here.stdout.splitlines()[-1], there.stdout.splitlines()[-1]
        base = f"http://127.0.0.1:{port}/v1"
        ok = eventbatch("batch", "list", "--base-url", base, "--api-key", good)
        assert ok.returncode == 0 and "no batches yet" in ok.stdout, ok.stderr
        refused = eventbatch("batch", "list", "--base-url", base, "--api-key", bad)
        assert refused.returncode == 1
        [line] = refused.stderr.splitlines()
        assert line.startswith(f"eventbatch: error: 401 from {base}: Incorrect API key") and "database" in line
    finally:
        serve.stop()
