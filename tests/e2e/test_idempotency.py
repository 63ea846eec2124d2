"""Idempotency keys (SPEC §12.3), through the official openai client as a user sends them:
`extra_headers={"Idempotency-Key": ...}` on uploads, creates and cancels."""

from __future__ import annotations

import io
import threading
import uuid

import openai
import pytest

from conftest import chat_line, jsonl, slow_line, wait_status


def _client(server, new_key, project: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=new_key(project), max_retries=0, timeout=60)


def _key() -> dict:
    return {"Idempotency-Key": str(uuid.uuid4())}


def _upload(client, lines, headers=None):
    return client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch",
                               extra_headers=headers or {})


def _create(client, file_id, headers=None, **extra):
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                                 extra_headers=headers or {}, **extra)


def _count(db, view: str, project: str) -> int:
    """The project's batches, or its uploaded files (not the batches' output files)."""
    only_uploads = " AND purpose = 'batch'" if view == "file_view" else ""
    return db.fetchval(f"SELECT count(*) FROM {view} WHERE project = $1{only_uploads}", project)


def test_an_upload_sent_again_with_its_key_answers_the_same_file_and_stores_nothing_more(server, new_key, db):
    project = f"idem-{uuid.uuid4().hex[:8]}"
    client = _client(server, new_key, project)
    key = _key()
    lines = [chat_line(i) for i in range(3)]
    first = _upload(client, lines, key)
    blobs_before = db.fetchval("SELECT count(*) FROM file_blobs")
    # The client picks a new multipart boundary for every send: the same upload still matches.
    again = client.files.with_raw_response.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch",
                                                  extra_headers=key)
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.parse().id == first.id and again.parse().bytes == first.bytes
    assert _count(db, "file_view", project) == 1
    assert db.fetchval("SELECT count(*) FROM file_blobs") == blobs_before
    assert client.files.content(first.id).read() == jsonl(lines)
    # Without a key, the same upload is a new file.
    assert _upload(client, lines).id != first.id


def test_a_create_sent_again_with_its_key_answers_the_same_batch_and_creates_nothing_more(server, new_key, db):
    project = f"idem-{uuid.uuid4().hex[:8]}"
    client = _client(server, new_key, project)
    f = _upload(client, [chat_line(i) for i in range(2)])
    key = _key()
    first = _create(client, f.id, key, metadata={"run": "1"})
    again = _create(client, f.id, key, metadata={"run": "1"})
    assert again.id == first.id and again.created_at == first.created_at
    assert _count(db, "batch_view", project) == 1
    assert wait_status(client, first.id, {"completed"}).request_counts.completed == 2
    assert _create(client, f.id, key, metadata={"run": "1"}).id == first.id   # still, once it has run
    assert _count(db, "batch_view", project) == 1


def test_concurrent_creates_with_one_key_make_exactly_one_batch(server, new_key, db):
    project = f"idem-{uuid.uuid4().hex[:8]}"
    client = _client(server, new_key, project)
    f = _upload(client, [chat_line(0)])
    key = _key()
    n = 6
    start = threading.Barrier(n)
    ids: list[str] = []
    errors: list[BaseException] = []

    def create():
        try:
            start.wait()
            ids.append(_create(client, f.id, key).id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(ids) == n and len(set(ids)) == 1
    assert _count(db, "batch_view", project) == 1
    wait_status(client, ids[0], {"completed"})


def test_a_key_reused_with_another_request_is_409_idempotency_key_reused(server, new_key, db):
    project = f"idem-{uuid.uuid4().hex[:8]}"
    client = _client(server, new_key, project)
    f = _upload(client, [chat_line(0)])
    key = _key()
    first = _create(client, f.id, key, metadata={"run": "1"})
    with pytest.raises(openai.ConflictError) as caught:
        _create(client, f.id, key, metadata={"run": "2"})
    assert caught.value.status_code == 409 and caught.value.code == "idempotency_key_reused"
    assert "different request" in caught.value.message
    # and on another route with the same key: also another request
    with pytest.raises(openai.ConflictError) as caught:
        _upload(client, [chat_line(0)], key)
    assert caught.value.code == "idempotency_key_reused"
    # an upload's key with other bytes
    upload_key = _key()
    _upload(client, [chat_line(0)], upload_key)
    with pytest.raises(openai.ConflictError) as caught:
        _upload(client, [chat_line(1)], upload_key)
    assert caught.value.code == "idempotency_key_reused"
    assert _count(db, "batch_view", project) == 1 and _count(db, "file_view", project) == 2
    assert client.batches.retrieve(first.id).metadata == {"run": "1"}


def test_another_projects_same_key_is_its_own(server, new_key, db):
    a = _client(server, new_key, f"idem-a-{uuid.uuid4().hex[:8]}")
    b = _client(server, new_key, f"idem-b-{uuid.uuid4().hex[:8]}")
    key = _key()
    fa, fb = _upload(a, [chat_line(0)], key), _upload(b, [chat_line(0)], key)
    assert fa.id != fb.id
    key = _key()
    ba, bb = _create(a, fa.id, key), _create(b, fb.id, key)   # different bodies: no 409 across projects
    assert ba.id != bb.id
    assert a.batches.retrieve(ba.id).input_file_id == fa.id
    with pytest.raises(openai.NotFoundError):
        b.batches.retrieve(ba.id)


def test_a_cancel_sent_again_with_its_key_answers_the_first_response(server, new_key):
    client = _client(server, new_key, f"idem-{uuid.uuid4().hex[:8]}")
    b = _create(client, _upload(client, [slow_line(0, 30)]).id)
    wait_status(client, b.id, {"in_progress"})
    key = _key()
    first = client.batches.cancel(b.id, extra_headers=key)
    assert first.status == "cancelling"
    wait_status(client, b.id, {"cancelled"})
    with pytest.raises(openai.ConflictError):   # without the key: the batch is past cancelling
        client.batches.cancel(b.id)
    again = client.batches.cancel(b.id, extra_headers=key)
    assert again.status == "cancelling" and again.cancelling_at == first.cancelling_at


def test_a_failed_request_does_not_spend_its_key(server, new_key):
    client = _client(server, new_key, f"idem-{uuid.uuid4().hex[:8]}")
    key = _key()
    with pytest.raises(openai.BadRequestError):
        _create(client, "file-doesnotexist", key)
    f = _upload(client, [chat_line(0)])
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("in.jsonl", io.BytesIO(b"x")), purpose="fine-tune", extra_headers=key)
    assert _create(client, f.id, key).input_file_id == f.id   # the key is free after failures


def test_a_malformed_key_is_a_400(server, new_key):
    client = _client(server, new_key, f"idem-{uuid.uuid4().hex[:8]}")
    with pytest.raises(openai.BadRequestError) as caught:
        _upload(client, [chat_line(0)], {"Idempotency-Key": "x" * 300})
    assert caught.value.code == "invalid_idempotency_key"


def test_a_retry_sent_again_or_at_once_with_its_key_makes_one_new_batch(server, new_key, db):
    from openai.types import Batch
    project = f"idem-{uuid.uuid4().hex[:8]}"
    client = _client(server, new_key, project)
    failed = _create(client, _upload(client, [chat_line(0, mock={"status": 400}), chat_line(1)]).id)
    wait_status(client, failed.id, {"completed"})

    key = _key()
    n = 4
    start = threading.Barrier(n)
    ids: list[str] = []
    errors: list[BaseException] = []

    def retry():
        try:
            start.wait()
            ids.append(client.post(f"/batches/{failed.id}/retry", cast_to=Batch, options={"headers": key}).id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=retry) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(ids)) == 1 and ids[0] != failed.id
    again = client.post(f"/batches/{failed.id}/retry", cast_to=Batch, options={"headers": key})
    assert again.id == ids[0]
    assert _count(db, "batch_view", project) == 2     # the first batch and one retry
    assert client.post(f"/batches/{failed.id}/retry", cast_to=Batch).id != ids[0]   # without a key: another


def test_a_key_holds_24_hours_then_is_free_and_purged(server, new_key, db, database_url):
    import asyncio

    import asyncpg

    from eventbatch import idempotency
    project = f"idem-{uuid.uuid4().hex[:8]}"
    client = _client(server, new_key, project)
    f = _upload(client, [chat_line(0)])
    key = _key()
    first = _create(client, f.id, key, metadata={"run": "1"})
    assert db.fetchval("SELECT expires_at - created_at FROM idempotency_keys WHERE project = $1",
                       project).total_seconds() == 24 * 3600
    db.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE project = $1", project)
    second = _create(client, f.id, key, metadata={"run": "2"})   # another request: fine once the key expired
    assert second.id != first.id
    db.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE project = $1", project)

    async def purge():
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
        try:
            return await idempotency.purge_expired(pool)
        finally:
            await pool.close()
    assert asyncio.run(purge()) >= 1
    assert db.fetchval("SELECT count(*) FROM idempotency_keys WHERE project = $1", project) == 0


def test_concurrent_uploads_with_one_key_make_exactly_one_file(server, new_key, db):
    project = f"idem-{uuid.uuid4().hex[:8]}"
    client = _client(server, new_key, project)
    lines = [chat_line(i) for i in range(2000)]      # a few hundred KB: the uploads overlap
    key = _key()
    n = 4
    start = threading.Barrier(n)
    ids: list[str] = []
    errors: list[BaseException] = []

    def upload():
        try:
            start.wait()
            ids.append(_upload(client, lines, key).id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(ids)) == 1 and _count(db, "file_view", project) == 1
    # the duplicates' bytes were dropped: only the one file's pieces remain under any new id
    assert db.fetchval("SELECT count(DISTINCT file_id) FROM file_blobs WHERE file_id NOT IN "
                       "(SELECT id FROM file_view) AND written_at > now() - interval '1 minute'") == 0
    assert client.files.content(ids[0]).read() == jsonl(lines)


async def test_a_duplicate_of_a_request_still_running_is_409_in_use_not_a_503(server, new_key, database_url):
    """A first request that holds its key longer than an API call's wait on the database (2 s:
    a retry copying a big file, a busy database): its duplicate waits on the key's row. It must
    hear that the key is in use (409, retry later), not that the database is away (503), and
    its connection must not be cut for it."""
    import asyncio
    import time

    import asyncpg

    project = f"idem-{uuid.uuid4().hex[:8]}"
    client = await asyncio.to_thread(_client, server, new_key, project)
    f = await asyncio.to_thread(_upload, client, [chat_line(0)])
    key = _key()
    holder = await asyncpg.connect(database_url)
    try:
        tx = holder.transaction()
        await tx.start()
        # What the first request's own transaction holds while it runs: the key's new row.
        await holder.execute("INSERT INTO idempotency_keys (project, key, expires_at) "
                             "VALUES ($1, $2, now() + interval '1 day')", project, key["Idempotency-Key"])
        started = time.monotonic()
        with pytest.raises(openai.ConflictError) as caught:
            await asyncio.to_thread(_create, client, f.id, key)
        assert caught.value.code == "idempotency_key_in_use", caught.value
        assert "still being processed" in caught.value.message
        assert time.monotonic() - started < 5
        await tx.rollback()   # the first request failed: the key is free again
    finally:
        await holder.close()
    assert (await asyncio.to_thread(_create, client, f.id, key)).input_file_id == f.id


def test_a_key_reused_with_another_request_that_is_also_invalid_is_409_not_400(server, new_key):
    client = _client(server, new_key, f"idem-{uuid.uuid4().hex[:8]}")
    f = _upload(client, [chat_line(0)])
    key = _key()
    _create(client, f.id, key)
    with pytest.raises(openai.ConflictError) as caught:       # '48h' alone would be a 400
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="48h",
                              extra_headers=key)
    assert caught.value.code == "idempotency_key_reused"


def _raw_post(server, key: str, path: str, headers: dict, body: bytes) -> tuple[int, dict]:
    import http.client
    import json
    from urllib.parse import urlsplit
    u = urlsplit(server.base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("POST", u.path + path, body=body, headers={"Authorization": f"Bearer {key}", **headers})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def test_what_the_fingerprint_cannot_read_never_undoes_a_request(server, new_key, db):
    # The fingerprint is taken after the handler succeeded: what it could not encode or parse
    # answered a 500 and rolled the work back.
    project = f"idem-{uuid.uuid4().hex[:8]}"
    api_key = new_key(project)
    key = str(uuid.uuid4())
    # a part that is not the file, with a filename that is not UTF-8
    body = (b'--fz\r\nContent-Disposition: form-data; name="purpose"; filename="caf\xe9"\r\n\r\nbatch\r\n'
            b'--fz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
            + jsonl([chat_line(0)]) + b"\r\n--fz--\r\n")
    headers = {"Content-Type": "multipart/form-data; boundary=fz", "Idempotency-Key": key}
    status, first = _raw_post(server, api_key, "/files", headers, body)
    assert status == 200, first
    status, again = _raw_post(server, api_key, "/files", headers, body)
    assert status == 200 and again["id"] == first["id"]
    assert _count(db, "file_view", project) == 1
    # a cancel sent with a multipart Content-Type (no boundary; a cancel reads no body)
    client = _client(server, new_key, project)
    b = _create(client, first["id"])
    status, cancelled = _raw_post(server, api_key, f"/batches/{b.id}/cancel",
                                  {"Content-Type": "multipart/form-data", "Idempotency-Key": str(uuid.uuid4())}, b"")
    assert status == 200 and cancelled["status"] in ("cancelling", "cancelled"), cancelled


def test_a_large_body_no_route_reads_does_not_undo_a_request_with_a_key(server, new_key):
    # a cancel sent with 2 MiB of text: the cancel reads no body, and the fingerprint must not
    # fail on it (over the 1 MiB a non-upload body may have) after the cancel succeeded
    project = f"idem-{uuid.uuid4().hex[:8]}"
    api_key = new_key(project)
    client = _client(server, new_key, project)
    b = _create(client, _upload(client, [slow_line(0, 30)]).id)
    headers = {"Content-Type": "text/plain", "Idempotency-Key": str(uuid.uuid4())}
    status, first = _raw_post(server, api_key, f"/batches/{b.id}/cancel", headers, b"x" * (2 << 20))
    assert status == 200 and first["status"] in ("cancelling", "cancelled"), first
    status, again = _raw_post(server, api_key, f"/batches/{b.id}/cancel", headers, b"x" * (2 << 20))
    assert status == 200 and again["cancelling_at"] == first["cancelling_at"]
