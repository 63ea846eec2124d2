"""The README's quickstart, run as a newcomer would: in a copy of the repository, after only the
README's install command, in a fresh virtualenv of its own (pip fetches the dependencies from
the package index, or its cache). The shell block is run as written; only when 8080 or 8081 is
taken on this machine are the ports moved (`serve --port`, EVENTBATCH_BASE_URL), and the test says
so. Then the Python block, then the README's way of stopping; the embedded Postgres must stop too.

Set EVENTBATCH_README_TEST_SHARED_VENV=1 to use the running interpreter's environment instead of
a fresh one (for a machine without the package index); the test prints which one it used."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_of_the_repository(dest: Path) -> Path:
    skip = shutil.ignore_patterns(".git", ".venv*", "__pycache__", ".eventbatch", "*.egg-info", ".pytest_cache",
                                  "results", "build", "dist")
    shutil.copytree(ROOT, dest, ignore=skip)
    return dest


def postgres_under(folder: Path) -> list[int]:
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(folder) in a for a in (p.info["cmdline"] or [])) and "postgres" in (p.info["cmdline"] or [""])[0]:
                pids.append(p.pid)
        except psutil.Error:
            pass
    return pids


def leftovers(folder: Path) -> list[psutil.Process]:
    """Processes started from the copy (the quickstart's background jobs), if any outlived it."""
    found = []
    for p in psutil.process_iter(["cwd", "cmdline"]):
        try:
            if p.info["cwd"] and str(folder) in p.info["cwd"] and p.pid != os.getpid():
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.mark.timeout(1200)
def test_the_readme_quickstart_runs_as_pasted(tmp_path):
    [install] = blocks(section("Set-up"), "sh")
    [shell] = blocks(section("Quickstart with the mock provider"), "sh")[:1]
    [python] = blocks(section("Quickstart with the mock provider"), "python")
    stop = re.search(r"\*\*Stopping\.\*\* `([^`]+)`", README).group(1)
    assert install.strip() == "python3 -m venv .venv && .venv/bin/pip install -e ."
    assert "eventbatch batch submit" in shell and stop == "kill %2 %1"

    repo = copy_of_the_repository(tmp_path / "eventbatch")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBATCH_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)

    if os.environ.get("EVENTBATCH_README_TEST_SHARED_VENV"):
        (repo / ".venv").symlink_to(Path(sys.executable).resolve().parent.parent)
        env["PYTHONPATH"] = str(repo)
        print(f"\nREADME quickstart: the shared virtualenv of {sys.executable}, with PYTHONPATH={repo}")
    else:
        print(f"\nREADME quickstart: a fresh virtualenv in {repo / '.venv'}, from the README's install command")
        started = time.time()
        r = subprocess.run(["bash", "-c", install.replace("python3", sys.executable, 1)], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"the README's install command failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        print(f"installed in {time.time() - started:.0f}s")

    script = shell
    if not (port_free(8080) and port_free(8081)):
        api, mock = free_port(), free_port()
        print(f"8080 or 8081 is taken here: the quickstart runs on {api} and {mock} instead")
        script = (script.replace("--port 8081", f"--port {mock}").replace("127.0.0.1:8081", f"127.0.0.1:{mock}")
                  .replace("eventbatch serve ", f"eventbatch serve --port {api} "))
        python = python.replace("127.0.0.1:8080", f"127.0.0.1:{api}")
        env["EVENTBATCH_BASE_URL"] = f"http://127.0.0.1:{api}/v1"
    whole = ("set -euo pipefail\n" + script
             + "\n.venv/bin/python - <<'PYTHON'\n" + python + "PYTHON\n"
             + stop + "\nwait\n")
    # Output to files, not pipes: a daemon that inherits a pipe (the embedded Postgres) would hold it open.
    out_path, err_path = tmp_path / "quickstart.out", tmp_path / "quickstart.err"
    try:
        with out_path.open("w") as out_file, err_path.open("w") as err_file:
            code = subprocess.run(["bash", "-c", whole], cwd=repo, env=env, stdout=out_file, stderr=err_file,
                                  timeout=300).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    finally:
        for p in leftovers(repo):
            p.kill()
    out, err = out_path.read_text(), err_path.read_text()
    assert code == 0, f"the quickstart failed (exit {code}):\n{out[-4000:]}\n{err[-4000:]}"

    # the client: a batch of 100, every custom_id once in the downloaded files, progress shown
    files = sorted((repo / "results").glob("*.jsonl"))
    ids = [json.loads(line)["custom_id"] for f in files for line in f.read_text().splitlines() if line]
    assert sorted(ids) == sorted(f"q{i}" for i in range(100)) and len(set(ids)) == 100
    assert re.search(r"batch_\w+ completed: 100/100 done \(100%\), 0 failed", err), err[-3000:]
    assert "eventbatch: database: the embedded Postgres in" in err
    # the Python block: its progress lines, then the start of the output file
    assert "completed" in out and '"custom_id": "q0"' in out.replace('"custom_id":"q0"', '"custom_id": "q0"')
    # stopping: the servers are gone, and the embedded Postgres stops with the last of them
    deadline = time.time() + 30
    while postgres_under(repo / ".eventbatch") and time.time() < deadline:
        time.sleep(0.3)
    assert postgres_under(repo / ".eventbatch") == [], "the embedded Postgres kept running after `kill %2 %1`"
    assert (repo / ".eventbatch" / "pgdata" / "PG_VERSION").exists()   # where the README says the data lives
