"""`eventbatch replay`: a batch's history from the log, in order, for auditors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

from conftest import ROOT, base_env, chat_line, jsonl, said_lines, slow_line, wait_status


def replay(database_url, *args):
    return subprocess.run([sys.executable, "-m", "eventbatch", "replay", *args], cwd=ROOT,
                          env=base_env(database_url), capture_output=True, text=True, timeout=120)


def test_replay_of_a_batch_with_retries_and_a_cancel(client, database_url):
    lines = ([chat_line(i, mock={"status": 503, "times": 2, "retry_after_ms": 1}) for i in range(3)]
             + [chat_line(i) for i in range(3, 5)] + [slow_line(i) for i in range(5, 8)])
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + 60
    while client.batches.retrieve(b.id).request_counts.completed < 5:
        assert time.time() < deadline
        time.sleep(0.1)
    client.batches.cancel(b.id)
    wait_status(client, b.id, {"cancelled"})

    r = replay(database_url, b.id, "--json", "--requests")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    summary = rows.pop()["summary"]
    events = [x["event"] for x in rows]
    assert events[:3] == ["batch_created", "batch_validated", "batch_started"]
    i_cancelling, i_written, i_cancelled = (events.index(n) for n in
                                            ("batch_cancelling", "batch_output_written", "batch_cancelled"))
    assert i_cancelling < i_written < i_cancelled == len(events) - 1
    assert [x["position"] for x in rows] == sorted(x["position"] for x in rows)
    succeeded = [x for x in rows if x["event"] == "request_succeeded"]
    cancelled = [x for x in rows if x["event"] == "request_failed"]
    assert sorted(x["custom_id"] for x in succeeded) == [f"req-{i}" for i in range(5)]
    assert sorted(x["custom_id"] for x in cancelled) == [f"req-{i}" for i in range(5, 8)]
    assert all(x["error_code"] == "batch_cancelled" for x in cancelled)
    assert all(events.index("batch_cancelling") < rows.index(x) for x in cancelled)  # settled after the cancel
    retried = {x["custom_id"]: x for x in succeeded if x["attempts"] > 1}
    assert sorted(retried) == ["req-0", "req-1", "req-2"]
    for x in retried.values():
        assert x["attempts"] == 3 and x["status_code"] == 200
        assert x["detail"].startswith("tried: 503 (") and x["detail"].count("503") == 2
    assert summary["status"] == "cancelled" and summary["requests_succeeded"] == 5
    assert summary["requests_failed"] == 3 and summary["requests_retried"] == 3
    # 3 requests tried 3 times, 2 once, and the 3 slow ones cut short in flight by the cancel
    assert summary["upstream_attempts"] == 3 * 3 + 2 + 3
    assert all(x["attempts"] == 1 and "aborted" in x["detail"] for x in cancelled)

    # without --requests: batch-level events only, same order; the person-readable format
    short = replay(database_url, b.id)
    assert short.returncode == 0
    text = short.stdout.splitlines()
    assert [t.split()[1] for t in text[:-1]] == [e for e in events if not e.startswith("request_")]
    assert "batch_cancelled" in text[-2] and text[-1].startswith(f"-- {b.id}: cancelled; 5 succeeded, 3 failed, 3 retried")


def test_replay_of_an_unknown_batch_is_one_clear_line(database_url):
    r = replay(database_url, "batch_doesnotexist")
    assert r.returncode == 2
    assert len(said_lines(r.stderr)) == 1 and "batch_doesnotexist" in r.stderr and "Traceback" not in r.stderr


def test_replay_of_a_batch_that_never_reached_the_provider_says_so(client, database_url):
    # a file that fails validation: no request is sent upstream, so there is no mean to print
    f = client.files.create(file=("bad.jsonl", io.BytesIO(b"{not json\n")), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, b.id, {"failed"})
    r = replay(database_url, b.id)
    assert r.returncode == 0, r.stderr
    last = r.stdout.splitlines()[-1]
    assert last.startswith(f"-- {b.id}: failed;") and "no upstream attempts" in last and "None" not in last, last
    summary = json.loads(replay(database_url, b.id, "--json").stdout.splitlines()[-1])["summary"]
    assert summary["upstream_attempts"] == 0 and summary["mean_attempt_ms"] is None


def test_replay_into_a_reader_that_stops_early_ends_quietly(client, database_url):
    # `eventbatch replay BATCH | head -1`: the reader leaves; no traceback, the exit code of a
    # command stopped by SIGPIPE (what a shell's pipefail sees from `yes | head`)
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(chat_line(i) for i in range(3)))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, b.id, {"completed"})
    p = subprocess.Popen([sys.executable, "-m", "eventbatch", "replay", b.id, "--requests"], cwd=ROOT,
                         env=base_env(database_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()                       # gone before the first line
    stderr = p.stderr.read()
    assert p.wait(timeout=60) == 141, stderr
    assert said_lines(stderr) == [], stderr
