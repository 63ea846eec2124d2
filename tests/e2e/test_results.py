"""Results (SPEC §12.1, §12.5) through the official openai client: output and error files served
from the request events (no second copy, exact `bytes`, the same bytes at every download and
after a rebuild), and GET /v1/batches/{id}/results while the batch runs."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import time

import asyncpg
import openai
import pytest
from openai._legacy_response import LegacyAPIResponse

from conftest import ROOT, base_env, chat_line, jsonl, slow_line, wait_status
from eventbatch import ids, results
from invariants import assert_invariants


def run_batch(client, lines):
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def get_results(client: openai.OpenAI, batch_id: str, **params) -> tuple[LegacyAPIResponse, bytes, str]:
    """GET /batches/{id}/results as a user of the openai client would: a request of the client's
    own with its raw response (what `with_raw_response` gives), for the body and the cursor."""
    r = client.get(f"/batches/{batch_id}/results", cast_to=bytes,
                   options={"params": params, "headers": {"X-Stainless-Raw-Response": "true"}})
    return r, r.content, r.headers["x-results-cursor"]


def mixed_lines(n: int = 30) -> list[dict]:
    # successes with bodies of several sizes, upstream 400s, and a custom_id that needs escaping
    lines = [chat_line(i, max_tokens=5 + i % 9) if i % 7 else chat_line(i, mock={"status": 400}) for i in range(n)]
    lines[3]["custom_id"] = 'quote"d-ünïcode-3'
    return lines


def content(client, file_id) -> bytes:
    return client.files.content(file_id).read() if file_id else b""


def rebuild(database_url: str) -> None:
    subprocess.run([sys.executable, "-m", "eventbatch", "projections", "rebuild"], cwd=ROOT, check=True,
                   env=base_env(database_url), capture_output=True, timeout=300)


def test_output_files_are_served_from_the_log(client, db, database_url):
    lines = mixed_lines()
    b = run_batch(client, lines)
    done = wait_status(client, b.id, {"completed"}, timeout=60)
    # the lines equal those re-derived from the events; bytes == content length (tests/invariants.py)
    out, err = assert_invariants(client, db, b.id, [x["custom_id"] for x in lines])
    assert len(out) == 25 and len(err) == 5
    files = {fid: content(client, fid) for fid in (done.output_file_id, done.error_file_id)}
    # no second copy of the bodies: nothing stored for the output and error files
    assert db.fetchval("SELECT count(*) FROM file_blobs WHERE file_id = ANY($1::text[])", list(files)) == 0
    for fid, data in files.items():
        f = client.files.retrieve(fid)
        assert f.bytes == len(data) and f.purpose == "batch_output"
        assert content(client, fid) == data        # the same bytes at every download
    # output lines in input order
    assert [x["custom_id"] for x in out] == [x["custom_id"] for i, x in enumerate(lines) if i % 7]
    # a rebuild of every view leaves every output file's bytes (and `bytes`) unchanged
    rebuild(database_url)
    for fid, data in files.items():
        assert content(client, fid) == data and client.files.retrieve(fid).bytes == len(data)
    # deleting an output file hides it and frees nothing the log needs
    events_before = db.fetchval("SELECT count(*) FROM events WHERE batch_id = $1", b.id)
    assert client.files.delete(done.output_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(done.output_file_id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(done.output_file_id)
    assert db.fetchval("SELECT count(*) FROM events WHERE batch_id = $1", b.id) == events_before
    assert content(client, done.error_file_id) == files[done.error_file_id]
    _, all_lines, _ = get_results(client, b.id)
    assert sorted(all_lines.splitlines()) == sorted(b"".join(files.values()).splitlines())


def test_file_pages_are_bounded_by_bytes_and_join_to_the_same_file(client, db, database_url, monkeypatch):
    lines = [chat_line(i, max_tokens=50 + i) if i % 13 else chat_line(i, mock={"status": 400}) for i in range(40)]
    b = run_batch(client, lines)
    done = wait_status(client, b.id, {"completed"}, timeout=60)
    whole = {"succeeded": content(client, done.output_file_id), "failed": content(client, done.error_file_id)}

    async def pages(kind, page_bytes=results.PAGE_BYTES):
        conn = await asyncpg.connect(database_url)
        try:
            return [p async for p in results.file_pages(conn, b.id, kind, page_bytes=page_bytes)]
        finally:
            await conn.close()
    one_per_page = asyncio.run(pages("succeeded", 1))     # a budget below one event: a line per page, still moving
    assert len(one_per_page) == 36 and b"".join(one_per_page) == whole["succeeded"]
    few = asyncio.run(pages("succeeded", 4000))
    assert 1 < len(few) < 36 and b"".join(few) == whole["succeeded"]
    # windows of request indexes, some without a line of the file: the same bytes
    monkeypatch.setattr(results, "PAGE_ROWS", 5)
    for kind in ("succeeded", "failed"):
        assert b"".join(asyncio.run(pages(kind))) == whole[kind]
        assert b"".join(asyncio.run(pages(kind, 1000))) == whole[kind]
    assert len(asyncio.run(pages("failed"))) == 4


def test_results_while_running_then_the_union_is_the_files(client, db):
    fast = [chat_line(i) for i in range(8)] + [chat_line(8, mock={"status": 400}), chat_line(9, mock={"status": 400})]
    lines = fast + [slow_line(10, seconds=4), slow_line(11, seconds=4)]
    b = run_batch(client, lines)
    got: list[bytes] = []
    cursor = ""
    partial_seen = False
    deadline = time.time() + 60
    while True:
        status = client.batches.retrieve(b.id).status
        r, body, cursor = get_results(client, b.id, **({"after": cursor} if cursor else {}))
        assert r.headers["content-type"].startswith("application/jsonl")
        got += body.splitlines(keepends=True)
        if status == "in_progress" and len(got) >= 10:
            partial_seen = True
            assert len(got) == 10          # the fast ones, before the slow ones finished
        if status == "completed":
            break
        assert time.time() < deadline, status
        time.sleep(0.2)
    assert partial_seen, "no partial results were seen while the batch ran"
    done = client.batches.retrieve(b.id)
    out, err = content(client, done.output_file_id), content(client, done.error_file_id)
    # the union over cursors is the output file plus the error file, each line once, byte for byte
    assert len(got) == len(set(got)) == 12
    assert sorted(got) == sorted(out.splitlines(keepends=True) + err.splitlines(keepends=True))
    # in record order: the order of the outcomes' log positions
    order = [r["request_index"] for r in db.fetch(
        "SELECT request_index FROM events WHERE batch_id = $1 AND request_index IS NOT NULL ORDER BY position", b.id)]
    index_of = {ids.request_line_id(b.id, i): i for i in range(len(lines))}
    assert [index_of[json.loads(x)["id"]] for x in got] == order
    # nothing new after the last cursor; the whole of it again from the start
    _, body, again = get_results(client, b.id, after=cursor)
    assert body == b"" and again == cursor
    _, body, _ = get_results(client, b.id)
    assert body == b"".join(got)
    # the status filter
    _, failed, _ = get_results(client, b.id, status="failed")
    assert failed == err and len(err.splitlines()) == 2
    _, succeeded, _ = get_results(client, b.id, status="succeeded")
    assert sorted(succeeded.splitlines()) == sorted(out.splitlines())


def test_results_in_every_status_and_for_nobody_else(client, server, new_key):
    b = run_batch(client, [slow_line(0, seconds=30)])
    r, body, cursor = get_results(client, b.id)     # validating or in_progress: nothing yet
    assert r.status_code == 200 and body == b"" and cursor.isdigit()
    client.batches.cancel(b.id)
    wait_status(client, b.id, {"cancelled"})
    _, body, _ = get_results(client, b.id, status="failed")
    assert b"batch_cancelled" in body
    # another project's batch is the same 404 as one that never existed
    other = openai.OpenAI(base_url=server.base_url, api_key=new_key(), max_retries=0)
    with pytest.raises(openai.NotFoundError) as theirs:
        get_results(other, b.id)
    with pytest.raises(openai.NotFoundError) as missing:
        get_results(client, "batch_doesnotexist")
    assert theirs.value.body["message"].replace(b.id, "X") == missing.value.body["message"].replace(
        "batch_doesnotexist", "X")
    with pytest.raises(openai.BadRequestError) as bad:
        get_results(client, b.id, status="done")
    assert bad.value.body["param"] == "status"
    with pytest.raises(openai.BadRequestError) as bad:
        get_results(client, b.id, after="yesterday")
    assert bad.value.body["param"] == "after"


def test_large_answers_stored_compressed_are_served_as_they_came(client, db, database_url):
    """Answers of 2 kB and more are zstd frames in the log (migrations/070); every reader gets
    their JSON back: the output file, /results, the events feed, a rebuild's fold."""
    def line(i: int) -> dict:
        body = {"model": "text-embedding-3-small", "input": f"text {i}", "dimensions": 256 + 64 * i}
        if i % 2:
            body["encoding_format"] = "base64"
        return {"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings", "body": body}
    lines = [line(i) for i in range(6)]
    f = client.files.create(file=("emb.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    done = wait_status(client, b.id, {"completed"}, timeout=60)
    stored = db.fetch("SELECT size, octet_length(data) AS n FROM events WHERE batch_id = $1 "
                      "AND request_index IS NOT NULL", b.id)
    assert len(stored) == 6 and all(r["size"] >= 2000 and r["n"] < r["size"] for r in stored)
    out = content(client, done.output_file_id)
    assert client.files.retrieve(done.output_file_id).bytes == len(out)
    answers = [json.loads(x) for x in out.splitlines()]
    assert [a["custom_id"] for a in answers] == [x["custom_id"] for x in lines]
    for i, a in enumerate(answers):
        vector = a["response"]["body"]["data"][0]["embedding"]
        dimensions = len(base64.b64decode(vector)) // 4 if i % 2 else len(vector)
        assert dimensions == 256 + 64 * i
    _, all_lines, _ = get_results(client, b.id)
    assert sorted(all_lines.splitlines()) == sorted(out.splitlines())
    feed = client.get(f"/batches/{b.id}/events", cast_to=object, options={"params": {"limit": 100}})
    outcomes = [e["data"] for e in feed["data"] if e["type"] == "request_succeeded"]
    assert sorted(o["custom_id"] for o in outcomes) == sorted(x["custom_id"] for x in lines)
    audit = subprocess.run([sys.executable, "-m", "eventbatch", "replay", b.id, "--json", "--requests"], cwd=ROOT,
                           env=base_env(database_url), capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stderr
    assert json.loads(audit.stdout.splitlines()[-1])["summary"]["status"] == "completed"
    assert sum('"request_succeeded"' in x for x in audit.stdout.splitlines()) == 6
    rebuild(database_url)
    assert content(client, done.output_file_id) == out


def test_a_cursor_of_thousands_of_digits_is_a_400(client):
    # int() refuses a string of over 4,300 digits: that was a 500
    b = run_batch(client, [chat_line(0)])
    for call in (lambda: get_results(client, b.id, after="9" * 5000),
                 lambda: client.get(f"/batches/{b.id}/events", cast_to=object,
                                    options={"params": {"after": "9" * 5000}})):
        with pytest.raises(openai.BadRequestError) as bad:
            call()
        assert bad.value.body["param"] == "after"
