"""Start with nothing configured: the embedded Postgres is created under EVENTBATCH_DATA_DIR,
shared by every command pointed at that folder, and stopped with the last of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from conftest import ROOT, free_port, wait_http, Proc


def postgres_of(data_dir) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == "postgres" and any(str(data_dir) in a for a in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            pass
    return found


def env_for(data_dir, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBATCH_")}
    env.update({"EVENTBATCH_DATA_DIR": str(data_dir), "EVENTBATCH_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1",
                **extra})
    return env


def cli(data_dir, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "eventbatch", *args], cwd=ROOT, env=env_for(data_dir),
                          capture_output=True, text=True, timeout=timeout)


def test_serve_with_nothing_configured_shares_and_stops_the_embedded_postgres(tmp_path, mock):
    import openai
    data_dir = tmp_path / "state"
    # a command alone starts the embedded server and stops it when done
    r = cli(data_dir, "migrate")
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout and (data_dir / "pgdata" / "PG_VERSION").exists()
    assert postgres_of(data_dir) == []
    port = free_port()
    serve = Proc(["serve", "--port", str(port)], env_for(data_dir, EVENTBATCH_UPSTREAM_URL=mock.base_url),
                 tmp_path / "serve.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", serve, timeout=60)
        server_pids = {p.pid for p in postgres_of(data_dir)}
        assert server_pids
        # another command on the same folder uses the running server, and leaves it running
        keys = cli(data_dir, "keys", "create", "--project", "demo")
        assert keys.returncode == 0, keys.stderr
        key = keys.stdout.strip().splitlines()[-1]
        assert key.startswith("eb-")
        assert {p.pid for p in postgres_of(data_dir)} == server_pids
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        assert client.batches.list().data == []  # the key made by the other command works here
    finally:
        code = serve.stop(signal.SIGTERM)
    assert code == 0, serve.log()
    deadline = time.time() + 15
    while postgres_of(data_dir) and time.time() < deadline:
        time.sleep(0.2)
    assert postgres_of(data_dir) == [], "serve left its postgres running"
    # the data survived: a later command sees the project's key
    again = cli(data_dir, "projections", "rebuild", "--verify")
    assert again.returncode == 0 and "no differences" in again.stdout
    assert postgres_of(data_dir) == []


def test_bad_settings_fail_at_start_with_one_line(tmp_path):
    for args, extra, needle in (
        (["serve"], {"EVENTBATCH_WINDOW_SECONDS": "soon"}, "EVENTBATCH_WINDOW_SECONDS"),
        (["api"], {"EVENTBATCH_DATABASE_URL": "mysql://x"}, "EVENTBATCH_DATABASE_URL"),
        (["api"], {"EVENTBATCH_LOG_FORMAT": "xml"}, "EVENTBATCH_LOG_FORMAT"),
        (["api"], {"EVENTBATCH_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}, "cannot connect"),
        # a bad port or sslmode is one line too, and no password is ever printed whole
        (["api"], {"EVENTBATCH_DATABASE_URL": "postgresql://eb:s3cret@127.0.0.1:99999/db"}, "eb:***@"),
        (["api"], {"EVENTBATCH_DATABASE_URL": "postgresql://eb:s3cret@127.0.0.1:5432/db?sslmode=bogus"}, "sslmode"),
        (["migrate"], {"EVENTBATCH_DATABASE_URL": "postgresql://eb:s3cret@127.0.0.1:1/db"}, "eb:***@127.0.0.1:1"),
        (["serve"], {"EVENTBATCH_UPSTREAM_URL": "http://eb:s3cret@127.0.0.1:1/v1",
                     "EVENTBATCH_UPSTREAM_API_KEY": "sk-x"}, "eb:***@127.0.0.1:1"),
        (["serve"], {"EVENTBATCH_UPSTREAM_URL": "http://eb:s3cret@127.0.0.1:99999/v1"}, "eb:***@"),
    ):
        env = env_for(tmp_path / "d", **extra)
        r = subprocess.run([sys.executable, "-m", "eventbatch", *args], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
        assert "Traceback" not in r.stderr and "s3cret" not in r.stderr + r.stdout


def test_a_killed_serve_does_not_keep_the_embedded_postgres_running_for_ever(tmp_path, mock):
    """embedded-postgres keeps the pid of every process using the server; one killed with -9
    never removes its own, and then no later clean exit would ever stop the server."""
    data_dir = tmp_path / "state"
    env = env_for(data_dir, EVENTBATCH_UPSTREAM_URL=mock.base_url)
    port = free_port()
    killed = Proc(["serve", "--port", str(port)], env, tmp_path / "killed.log")
    wait_http(f"http://127.0.0.1:{port}/healthz", killed, timeout=60)
    assert postgres_of(data_dir)
    killed.stop(signal.SIGKILL)
    assert postgres_of(data_dir), "the server outlives the process that was killed"

    port = free_port()
    serve = Proc(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", serve, timeout=60)
    finally:
        code = serve.stop(signal.SIGTERM)
    assert code == 0, serve.log()
    deadline = time.time() + 15
    while postgres_of(data_dir) and time.time() < deadline:
        time.sleep(0.2)
    left = postgres_of(data_dir)
    for p in left:   # not left behind for the next test, whatever this one found
        p.terminate()
    assert left == [], "the last clean exit left the embedded postgres running"
