"""A plain `pip install .` (not editable) into a fresh virtualenv carries everything a deployment
needs: `eventbatch migrate` builds the schema of an empty database from the migrations inside the
wheel, and `eventbatch serve` starts on it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import uuid

from conftest import DB, ROOT, Proc, _with_dbname, free_port, wait_http

TABLES = {"schema_migrations", "events", "batch_view", "file_view", "file_blobs", "api_keys", "work_chunks"}


def installed_venv(tmp_path):
    """A virtualenv with eventbatch installed from a copy of the sources, without -e. Its
    dependencies come from the test's own environment through a .pth line (offline, and no
    second download of the Postgres wheel); eventbatch itself only from the new install."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("eventbatch", "migrations"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                        "--quiet", str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (venv / site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.rmtree(src)   # nothing of the sources is left to fall back on
    return venv


def env_for(database_url: str, **extra: str) -> dict[str, str]:
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBATCH_") and k != "PYTHONPATH"}
    env.update(EVENTBATCH_DATABASE_URL=database_url, EVENTBATCH_LOG_FORMAT="json", PYTHONUNBUFFERED="1", **extra)
    return env


def test_a_plain_install_migrates_an_empty_database_and_serves(tmp_path, database_url, mock):
    venv = installed_venv(tmp_path)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import eventbatch; print(eventbatch.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env_for(database_url), check=True)
    assert where.stdout.strip().startswith(str(venv)), where.stdout

    name = "install_" + uuid.uuid4().hex[:8]
    admin = DB(database_url)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_dbname(database_url, name)
    try:
        r = subprocess.run([str(venv / "bin" / "eventbatch"), "migrate"], capture_output=True, text=True,
                           cwd=tmp_path, env=env_for(url), timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        shipped = sorted(p.name for p in (ROOT / "migrations").glob("[0-9][0-9][0-9]_*.sql"))
        assert [line.removeprefix("applied ") for line in r.stdout.splitlines()[:-1]] == shipped
        assert "up to date" in r.stdout.splitlines()[-1]
        new = DB(url)
        tables = {row["tablename"] for row in new.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert TABLES <= tables
        assert sorted(row["name"] for row in new.fetch("SELECT name FROM schema_migrations")) == shipped

        port = free_port()
        serve = Proc(["serve", "--port", str(port)], env_for(url, EVENTBATCH_UPSTREAM_URL=mock.base_url),
                     tmp_path / "serve.log", command=[str(venv / "bin" / "eventbatch")], cwd=tmp_path)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", serve, timeout=60)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as ready:
                assert ready.status == 200
        finally:
            assert serve.stop() == 0, serve.log()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
