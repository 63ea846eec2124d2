"""`eventbatch batch …`, the command-line client, end to end against `serve` and the mock: as a
script sees it (plain progress lines, --json) and as a person at a terminal does (a pty)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, chat_line, free_port, jsonl

FAILING = {7, 31, 77}   # these lines the mock answers 400: they end in the error file


def eventbatch(*args, key: str | None = None, base_url: str | None = None, timeout: float = 180, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBATCH_")}
    full_env.update({k: v for k, v in (("EVENTBATCH_API_KEY", key), ("EVENTBATCH_BASE_URL", base_url)) if v})
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "eventbatch", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def requests_file(path: Path, n: int, latency_ms: float = 0) -> Path:
    lines = []
    for i in range(n):
        mock = {"status": 400} if i in FAILING else {"latency_ms": latency_ms}
        lines.append(chat_line(i, mock=mock))
    path.write_bytes(jsonl(lines))
    return path


def custom_ids(folder: Path) -> list[str]:
    ids = []
    for f in sorted(folder.glob("*.jsonl")):
        ids += [json.loads(line)["custom_id"] for line in f.read_text().splitlines() if line.strip()]
    return ids


def test_submit_wait_out_downloads_every_request_once_and_prints_progress(server, new_key, tmp_path):
    n = 240
    source = requests_file(tmp_path / "in.jsonl", n, latency_ms=400)   # a few seconds: progress moves
    out = tmp_path / "results"
    r = eventbatch("batch", "submit", str(source), "--metadata", "job=nightly", "team=search", "--wait",
                   "--out", str(out), "--interval", "0.2", key=new_key(), base_url=server.base_url)
    assert r.returncode == 0, r.stderr
    ids = custom_ids(out)
    assert sorted(ids) == sorted(f"req-{i}" for i in range(n)) and len(ids) == len(set(ids))
    [output] = out.glob("*_output.jsonl")
    [errors] = out.glob("*_error.jsonl")
    assert {json.loads(x)["custom_id"] for x in errors.read_text().splitlines()} == {f"req-{i}" for i in FAILING}
    batch_id = output.name.removesuffix("_output.jsonl")
    # progress, as plain lines (stderr is not a terminal here): done/total, failed, rate, ETA
    progress = [x for x in r.stderr.splitlines() if x.startswith(batch_id)]
    assert len(progress) >= 2, r.stderr
    assert progress[-1].startswith(f"{batch_id} completed: {n}/{n} done (100%), {len(FAILING)} failed, ")
    assert "/s, ETA" in progress[-1]
    assert any(" in_progress: " in x for x in progress), r.stderr
    assert f"{batch_id} completed: {n - len(FAILING)} succeeded, {len(FAILING)} failed of {n}" in r.stdout
    assert f"wrote {output}" in r.stdout and f"wrote {errors}" in r.stdout


def test_submit_under_a_terminal_draws_a_live_bar(server, new_key, tmp_path):
    n = 120
    source = requests_file(tmp_path / "in.jsonl", n, latency_ms=300)
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBATCH_")}
    env.update(EVENTBATCH_API_KEY=new_key(), EVENTBATCH_BASE_URL=server.base_url, TERM="xterm-256color",
               COLUMNS="100")
    pid, fd = pty.fork()
    if pid == 0:   # the child: stdin, stdout and stderr are the pty
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "eventbatch", "batch", "submit", str(source), "--wait",
                                   "--out", str(out), "--interval", "0.2"], env)
    screen = bytearray()
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except OSError:   # EIO: the child closed the pty
            break
        if not chunk:
            break
        screen += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = screen.decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    assert "\x1b[" in text and "\r" in text, "no live redraw on a terminal"
    assert "━" in text, "no bar drawn"
    assert f"{n}/{n}" in text and "completed" in text and f"{len(FAILING)} failed" in text
    assert "ETA" in text and "/s" in text
    assert sorted(custom_ids(out)) == sorted(f"req-{i}" for i in range(n))


def test_json_for_scripts(server, new_key, tmp_path):
    key = new_key()
    source = requests_file(tmp_path / "in.jsonl", 10)   # line 7 fails
    created = eventbatch("batch", "submit", str(source), "--json", key=key, base_url=server.base_url)
    assert created.returncode == 0, created.stderr
    batch = json.loads(created.stdout)
    assert batch["object"] == "batch" and batch["endpoint"] == "/v1/chat/completions"
    watched = eventbatch("batch", "watch", batch["id"], "--json", "--interval", "0.1", key=key,
                         base_url=server.base_url)
    assert watched.returncode == 0, watched.stderr
    done = json.loads(watched.stdout)
    assert done["status"] == "completed" and done["request_counts"] == {"total": 10, "completed": 9, "failed": 1}
    listed = json.loads(eventbatch("batch", "list", "--json", key=key, base_url=server.base_url).stdout)
    assert [b["id"] for b in listed["data"]] == [batch["id"]]
    got = json.loads(eventbatch("batch", "get", batch["id"], "--json", key=key, base_url=server.base_url).stdout)
    assert got["id"] == batch["id"] and got["usage"]["total_tokens"] > 0
    out = tmp_path / "dl"
    dl = eventbatch("batch", "download", batch["id"], "--out", str(out), "--json", key=key,
                    base_url=server.base_url)
    files = json.loads(dl.stdout)["files"]
    assert set(files) == {"output", "error"} and all(Path(p).is_file() for p in files.values())
    # the options go before the subcommand too
    before = eventbatch("batch", "--json", "--base-url", server.base_url, "get", batch["id"], key=key)
    assert json.loads(before.stdout)["id"] == batch["id"]


def test_cancel_and_its_line(server, new_key, tmp_path):
    key = new_key()
    source = requests_file(tmp_path / "in.jsonl", 50, latency_ms=30_000)
    batch = json.loads(eventbatch("batch", "submit", str(source), "--json", key=key, base_url=server.base_url).stdout)
    r = eventbatch("batch", "cancel", batch["id"], key=key, base_url=server.base_url)
    assert r.returncode == 0 and r.stdout.startswith(f"{batch['id']} is cancelling"), r.stdout + r.stderr
    r = eventbatch("batch", "watch", batch["id"], "--interval", "0.2", key=key, base_url=server.base_url)
    assert r.returncode == 1 and f"eventbatch: error: {batch['id']} ended cancelled" in r.stderr


@pytest.mark.parametrize("case", ["refused", "unauthorized", "not_found", "no_key", "no_file", "not_ready"])
def test_every_error_is_one_line_and_a_non_zero_exit(case, server, new_key, tmp_path):
    key = new_key()
    if case == "refused":
        r = eventbatch("batch", "list", key=key, base_url=f"http://127.0.0.1:{free_port()}/v1")
        needle = "cannot reach the eventbatch API at http://127.0.0.1:"
    elif case == "unauthorized":
        r = eventbatch("batch", "list", key="eb-not-a-key", base_url=server.base_url)
        needle = f"401 from {server.base_url}: Incorrect API key"
    elif case == "not_found":
        r = eventbatch("batch", "get", "batch_nope", key=key, base_url=server.base_url)
        needle = f"404 from {server.base_url}: No batch"
    elif case == "no_key":
        r = eventbatch("batch", "list", base_url=server.base_url)
        needle = "no API key: set EVENTBATCH_API_KEY"
    elif case == "no_file":
        r = eventbatch("batch", "submit", str(tmp_path / "missing.jsonl"), key=key, base_url=server.base_url)
        needle = "cannot read"
    else:
        source = requests_file(tmp_path / "in.jsonl", 3, latency_ms=30_000)
        batch = json.loads(eventbatch("batch", "submit", str(source), "--json", key=key,
                                      base_url=server.base_url).stdout)
        r = eventbatch("batch", "download", batch["id"], "--out", str(tmp_path), key=key, base_url=server.base_url)
        eventbatch("batch", "cancel", batch["id"], key=key, base_url=server.base_url)
        needle = "its files exist once it ends"
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert lines[0].startswith("eventbatch: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_retry_runs_the_failed_requests_again_and_refusals_are_the_servers_line(server, new_key, tmp_path):
    """`batch retry` calls POST /v1/batches/{id}/retry (section 12.2)."""
    key = new_key()
    source = requests_file(tmp_path / "in.jsonl", 40)   # lines 7 and 31 fail, and fail again
    first = eventbatch("batch", "submit", str(source), "--wait", "--out", str(tmp_path / "first"), "--json",
                       "--interval", "0.1", key=key, base_url=server.base_url)
    original = json.loads(first.stdout)
    r = eventbatch("batch", "retry", original["id"], "--wait", "--out", str(tmp_path / "again"), "--json",
                   "--interval", "0.1", key=key, base_url=server.base_url)
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert again["retry_of"] == original["id"] and again["id"] != original["id"]
    assert again["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    assert sorted(custom_ids(tmp_path / "again")) == ["req-31", "req-7"]
    # a batch that has not ended: the server's 409, as one line
    running = json.loads(eventbatch("batch", "submit", str(requests_file(tmp_path / "slow.jsonl", 3, 30_000)),
                                    "--json", key=key, base_url=server.base_url).stdout)
    try:
        refused = eventbatch("batch", "retry", running["id"], key=key, base_url=server.base_url)
        lines = refused.stderr.splitlines()
        assert refused.returncode == 1 and len(lines) == 1, refused.stderr
        assert lines[0].startswith(f"eventbatch: error: 409 from {server.base_url}: "), lines[0]
    finally:
        eventbatch("batch", "cancel", running["id"], key=key, base_url=server.base_url)
