"""Bad bytes are bad requests (SPEC §14): NUL where Postgres text cannot hold it, control and
non-ASCII bytes in multipart headers, over-long lines, raw UTF-8 in the path. Each is a 400 in
OpenAI's JSON envelope, never a 500, a plain-text page or a traceback in the log."""

from __future__ import annotations

import io
import json
import socket
import time
import uuid

import openai
import pytest

from conftest import chat_line, jsonl, wait_status


def host_port(server) -> tuple[str, int]:
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    return host, int(port)


def raw_request(server, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte (no client library would send these bytes), read to
    the end of the answer."""
    with socket.create_connection(host_port(server), timeout=30) as s:
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                head_part, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head_part.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(rest) >= length:
                    break
    head_part, _, rest = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, rest


def get(server, key: str, target: bytes, method: bytes = b"GET", extra: bytes = b"", body: bytes = b""):
    head = (method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n" + extra
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    return raw_request(server, head, body)


def envelope(answer, status: int = 400, param: str | None | type = ...) -> dict:
    got, headers, body = answer
    assert got == status, body[:300]
    assert headers["content-type"].startswith("application/json"), (headers, body[:300])
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == ("invalid_request_error" if status < 429 else err["type"])
    if param is not ...:
        assert err["param"] == param, err
    return err


def assert_no_traceback_since(server, mark: int) -> None:
    log = server.log()[mark:]
    assert "unhandled_error" not in log and "Traceback" not in log, log[-3000:]


@pytest.fixture()
def key(new_key):
    return new_key()


@pytest.mark.parametrize("target,param", [
    (b"/v1/files/file-%00abc", "file_id"),
    (b"/v1/files/%00/content", "file_id"),
    (b"/v1/batches/batch_%00", "batch_id"),
    (b"/v1/batches/batch_%00/events", "batch_id"),
    (b"/v1/batches/batch_%00/results", "batch_id"),
    (b"/v1/files?after=file-%00", "after"),
    (b"/v1/batches?after=%00", "after"),
    (b"/v1/files?purpose=%00batch", "purpose"),
])
def test_nul_in_ids_and_query_parameters_is_a_400(server, key, target, param):
    mark = len(server.log())
    envelope(get(server, key, target), 400, param)
    assert_no_traceback_since(server, mark)


def test_nul_in_deleted_and_cancelled_ids_is_a_400(server, key):
    envelope(get(server, key, b"/v1/files/file-%00", b"DELETE"), 400, "file_id")
    envelope(get(server, key, b"/v1/batches/batch_%00/cancel", b"POST"), 400, "batch_id")
    envelope(get(server, key, b"/v1/batches/batch_%00/retry", b"POST"), 400, "batch_id")


@pytest.mark.parametrize("cursor", [b"%C2%B2", b"9223372036854775808", b"99999999999999999999999999", b"-1"])
@pytest.mark.parametrize("route", [b"events", b"results"])
def test_a_cursor_that_is_no_position_is_a_400(server, key, route, cursor):
    # Positions are bigint: a larger number (or a digit int() refuses, like '²') was a 500.
    # The key's project owns the batch, so the cursor is what the route gets to.
    own = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
    f = own.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch")
    b = own.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    mark = len(server.log())
    envelope(get(server, key, b"/v1/batches/" + b.id.encode() + b"/" + route + b"?after=" + cursor), 400, "after")
    assert_no_traceback_since(server, mark)


def test_nul_in_json_bodies_is_a_400(server, client):
    f = client.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch")
    mark = len(server.log())
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=f.id + "\x00", endpoint="/v1/chat/completions", completion_window="24h")
    assert e.value.body["param"] == "input_file_id"
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"job": "a\x00b"})
    assert e.value.body["param"] == "metadata.job"
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"j\x00b": "x"})
    assert e.value.body["param"].startswith("metadata")
    # a lone surrogate escape cannot become text Postgres stores: refused as JSON it cannot be
    body = (b'{"input_file_id":"' + f.id.encode() + b'","endpoint":"/v1/chat/completions",'
            b'"completion_window":"24h","metadata":{"k":"\\ud800"}}')
    envelope(get(server, client.api_key, b"/v1/batches", b"POST", b"Content-Type: application/json\r\n", body),
             400)
    assert_no_traceback_since(server, mark)
    assert client.batches.list().data == []


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"fz") -> bytes:
    """parts: (the Content-Disposition line's parameters and any further header lines, value)."""
    out = b""
    for headers, value in parts:
        out += b"--" + boundary + b"\r\nContent-Disposition: form-data; " + headers + b"\r\n\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def upload(server, key: str, file_headers: bytes, value: bytes = jsonl([chat_line(1)])):
    body = multipart([(b'name="purpose"', b"batch"), (b'name="file"; ' + file_headers, value)])
    return get(server, key, b"/v1/files", b"POST", b"Content-Type: multipart/form-data; boundary=fz\r\n", body)


@pytest.mark.parametrize("file_headers", [
    b"filename*=utf-8''a%00b.jsonl",                       # NUL in the decoded name
    b'filename="a\x00b.jsonl"',                            # NUL as a raw byte
    b'filename="a\x01\x7f.jsonl"',                         # control bytes
    b'filename="caf\xe9.jsonl"',                           # not UTF-8
    b'filename="a.jsonl"\r\nContent-Type: text/\xff\x00',  # a further header with bad bytes
    b'filename="a.jsonl"\r\nX-\x01: y',                    # a control byte in a header name
    b'filename="' + b"n" * 9000 + b'.jsonl"',              # over the multipart reader's 8,190-byte lines
])
def test_bad_bytes_in_multipart_headers_are_a_400(server, key, file_headers):
    mark = len(server.log())
    envelope(upload(server, key, file_headers), 400)
    assert_no_traceback_since(server, mark)
    status, _, listed = get(server, key, b"/v1/files")
    assert status == 200 and json.loads(listed)["data"] == []


def test_a_content_disposition_that_cannot_be_read_is_said_so(server, key):
    # aiohttp's parser gives up on a ';' after an escaped quote: the part has no name, and the
    # answer says why no file was found rather than only that it is missing
    error = envelope(upload(server, key, b'filename="a\\";evil=1;x=\\".jsonl"'), 400)
    assert error["param"] == "file" and "Content-Disposition header could not be read" in error["message"]
    assert "filename*=UTF-8''" in error["message"]
    status, _, body = upload(server, key, b'filename="a\\"b.jsonl"')     # an escaped quote alone is fine
    assert status == 200 and json.loads(body)["filename"] == 'a"b.jsonl', body


def test_a_utf8_filename_is_kept(server, key):
    status, _, body = upload(server, key, "filename=\"résumé.jsonl\"".encode())
    assert status == 200, body
    assert json.loads(body)["filename"] == "résumé.jsonl"


@pytest.mark.parametrize("target", [
    "/v1/files/fïle-ü".encode(),                           # raw UTF-8 in the path
    b"/v1/files/\xff\xfe",                                 # raw bytes that are not UTF-8
    b"/v1/files/file-" + b"a" * 20_000,                    # a 20 kB id: longer than a request line may be
    b"/v1/batches?after=" + b"b" * 20_000,
])
def test_unparseable_request_lines_get_the_json_envelope(server, key, target):
    mark = len(server.log())
    envelope(get(server, key, target), 400)
    assert_no_traceback_since(server, mark)


def test_an_over_long_header_gets_the_json_envelope(server, key):
    envelope(get(server, key, b"/v1/files", extra=b"X-Long: " + b"x" * 20_000 + b"\r\n"), 400)


def test_a_405_names_the_allowed_methods(server, key):
    status, headers, body = get(server, key, b"/v1/batches", b"PUT")
    envelope((status, headers, body), 405)
    assert set(headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
    status, headers, body = get(server, key, b"/v1/files/file-x/content", b"POST")
    envelope((status, headers, body), 405)
    assert set(headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


def test_empty_after_is_like_no_after(client):
    f = client.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch")
    assert [x.id for x in client.files.list(after="").data] == [f.id]
    assert client.batches.list(after="").data == []


def test_expires_after_as_a_json_part_is_honoured_or_refused(server, key):
    def send(value: bytes):
        body = multipart([(b'name="purpose"', b"batch"),
                          (b'name="expires_after"\r\nContent-Type: application/json', value),
                          (b'name="file"; filename="a.jsonl"', jsonl([chat_line(1)]))])
        return get(server, key, b"/v1/files", b"POST", b"Content-Type: multipart/form-data; boundary=fz\r\n", body)

    status, _, body = send(b'{"anchor": "created_at", "seconds": 7200}')
    assert status == 200, body
    made = json.loads(body)
    assert made["expires_at"] == made["created_at"] + 7200
    envelope(send(b'{"anchor": "created_at", "seconds": 5}'), 400, "expires_after.seconds")
    envelope(send(b'{"anchor": "last_access", "seconds": 7200}'), 400, "expires_after.anchor")
    envelope(send(b'{"anchor": "created_at"'), 400, "expires_after")
    envelope(send(b'"tomorrow"'), 400, "expires_after")


def _log_lines_of(server, mark: int, tag: str) -> list[dict]:
    """The server's log lines since `mark` about request `tag`, once one is written (10 s at most)."""
    deadline = time.time() + 10
    while tag not in server.log()[mark:] and time.time() < deadline:
        time.sleep(0.1)
    return [json.loads(line) for line in server.log()[mark:].splitlines() if tag in line]


def test_a_client_that_leaves_mid_upload_is_one_quiet_line(server, key):
    mark = len(server.log())
    tag = "req_gone_" + uuid.uuid4().hex[:8]
    head = (b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() + b"\r\n"
            b"x-request-id: " + tag.encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=fz\r\nContent-Length: 1000000\r\n\r\n")
    with socket.create_connection(host_port(server)) as s:
        s.sendall(head + b'--fz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                  b'--fz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
                  + jsonl([chat_line(i) for i in range(50)]))
        time.sleep(0.3)
    lines = _log_lines_of(server, mark, tag)
    assert len(lines) == 1, lines
    assert lines[0]["level"] in ("info", "warning") and lines[0]["event"] == "upload_abandoned", lines
    assert_no_traceback_since(server, mark)
    status, _, listed = get(server, key, b"/v1/files")
    assert json.loads(listed)["data"] == []


_PURPOSE = b'--fz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
_FILE_HEAD = b'--fz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'


@pytest.mark.parametrize("body,says", [
    (_PURPOSE + _FILE_HEAD + b"{}", "closing boundary"),                        # no closing boundary at all
    (_PURPOSE + _FILE_HEAD + b"{}\r\n--fz\r\n", "closing boundary"),            # the last boundary lacks its '--'
    (_PURPOSE + b"--fz\r\nContent-Disposition: form-data; name=", "closing boundary"),   # ends inside a part's headers
    (b"garbage", "starting boundary"),                                          # no starting boundary
    (b"", "starting boundary"),                                                 # no body at all
])
def test_a_truncated_or_unframed_multipart_body_is_a_400(server, key, body, says):
    mark = len(server.log())
    err = envelope(get(server, key, b"/v1/files", b"POST", b"Content-Type: multipart/form-data; boundary=fz\r\n",
                       body), 400, "file")
    assert says in err["message"] and "boundary=fz" in err["message"], err
    assert_no_traceback_since(server, mark)
    status, _, listed = get(server, key, b"/v1/files")
    assert status == 200 and json.loads(listed)["data"] == []


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate", b"br"])
@pytest.mark.parametrize("route,content_type", [
    (b"/v1/files", b"multipart/form-data; boundary=fz"),
    (b"/v1/batches", b"application/json"),
])
def test_a_body_that_does_not_decode_as_its_content_encoding_is_a_400(server, key, encoding, route, content_type):
    mark = len(server.log())
    err = envelope(get(server, key, route, b"POST", b"Content-Type: " + content_type + b"\r\n"
                       b"Content-Encoding: " + encoding + b"\r\n", b"notcompressed" * 10), 400)
    assert "Content-Encoding" in err["message"], err
    assert_no_traceback_since(server, mark)


def test_a_compressed_json_body_is_limited_by_what_it_inflates_to(server, key):
    # a gzip bomb: 64 kB on the wire, 64 MB inflated; the 1 MiB limit on JSON bodies is of the latter
    import gzip
    body = gzip.compress(b'{"input_file_id": "' + b"a" * (64 << 20) + b'"}', compresslevel=9)
    assert len(body) < 200_000
    mark = len(server.log())
    start = time.monotonic()
    err = envelope(get(server, key, b"/v1/batches", b"POST",
                       b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n", body), 413)
    assert "too large" in err["message"] and time.monotonic() - start < 10
    assert_no_traceback_since(server, mark)


def test_a_compressed_upload_is_limited_by_what_it_inflates_to(server, key, db):
    # 250 MB of JSONL lines inflated from well under 1 MB: over the file limit once inflated, so a
    # 413, and no piece of it kept
    import gzip
    from eventbatch.validation import MAX_FILE_BYTES
    line = jsonl([chat_line(1)])
    inflated = line * ((MAX_FILE_BYTES + (50 << 20)) // len(line))
    wrapped = multipart([(b'name="purpose"', b"batch"), (b'name="file"; filename="bomb.jsonl"', inflated)])
    body = gzip.compress(wrapped, compresslevel=6)
    del inflated, wrapped
    assert len(body) < 2_000_000
    pieces_before = db.fetchval("SELECT count(*) FROM file_blobs")
    mark = len(server.log())
    err = envelope(get(server, key, b"/v1/files", b"POST", b"Content-Type: multipart/form-data; boundary=fz\r\n"
                       b"Content-Encoding: gzip\r\n", body), 413)
    assert "larger than" in err["message"]
    assert_no_traceback_since(server, mark)
    assert db.fetchval("SELECT count(*) FROM file_blobs") <= pieces_before


def test_a_well_compressed_json_body_still_works(server, key, client):
    import gzip
    f = client.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch")
    body = gzip.compress(json.dumps({"input_file_id": f.id, "endpoint": "/v1/chat/completions",
                                     "completion_window": "24h"}).encode())
    status, _, answer = get(server, client.api_key, b"/v1/batches", b"POST",
                            b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n", body)
    assert status == 200, answer


@pytest.mark.parametrize("body", [b"[]", b'[{"input_file_id": "file-x"}]', b'"batch"', b"3", b"null"])
def test_a_json_body_that_is_not_an_object_says_so(server, key, body):
    err = envelope(get(server, key, b"/v1/batches", b"POST", b"Content-Type: application/json\r\n", body), 400, None)
    assert err["message"].startswith("The request body must be a JSON object"), err
    assert "None" not in err["message"], err


def _metric(server, route: str, status: int) -> float:
    import urllib.request
    with urllib.request.urlopen(server.base_url.rsplit("/v1", 1)[0] + "/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("eventbatch_http_requests_total{") and f'route="{route}"' in line \
                and f'status="{status}"' in line and 'method="POST"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_client_that_leaves_mid_json_body_is_one_quiet_line(server, key):
    mark = len(server.log())
    before_499, before_500 = _metric(server, "/v1/batches", 499), _metric(server, "/v1/batches", 500)
    tag = "req_gone_" + uuid.uuid4().hex[:8]
    head = (b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() + b"\r\n"
            b"x-request-id: " + tag.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    with socket.create_connection(host_port(server)) as s:
        s.sendall(head + b'{"input_file_id": ')
        time.sleep(0.3)
    lines = _log_lines_of(server, mark, tag)
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "info" and lines[0]["event"] == "request_abandoned", lines
    assert_no_traceback_since(server, mark)
    assert _metric(server, "/v1/batches", 499) == before_499 + 1
    assert _metric(server, "/v1/batches", 500) == before_500


def test_json_nested_past_what_the_decoder_follows_is_a_400(server, key, client):
    f = client.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch")
    deep = b"[" * 2000 + b"]" * 2000
    body = (b'{"input_file_id": "' + f.id.encode() + b'", "endpoint": "/v1/chat/completions", '
            b'"completion_window": "24h", "metadata": {"a": ' + deep + b"}}")
    mark = len(server.log())
    err = envelope(get(server, key, b"/v1/batches", b"POST", b"Content-Type: application/json\r\n", body), 400)
    assert "nested too deeply" in err["message"]
    assert_no_traceback_since(server, mark)


def test_echoed_bytes_that_are_not_utf8_stay_a_400(server, key, client):
    # a 400 that repeats what was sent must not fail to encode it (that was a 500)
    b = client.batches.create(input_file_id=client.files.create(
        file=("a.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch").id,
        endpoint="/v1/chat/completions", completion_window="24h")
    mark = len(server.log())
    err = envelope(get(server, client.api_key, f"/v1/batches/{b.id}/events".encode(), b"GET",
                       b"Accept: text/event-stream\r\nLast-Event-ID: \xff\xfe\r\n"), 400)
    assert "Last-Event-ID" in err["message"]
    envelope(upload_parts(server, key, [(b'name="\xff\xfe"', b"v" * 2000)]), 400)
    assert_no_traceback_since(server, mark)


def upload_parts(server, key: str, extra_parts):
    body = multipart([(b'name="purpose"', b"batch"), *extra_parts,
                      (b'name="file"; filename="a.jsonl"', jsonl([chat_line(1)]))])
    return get(server, key, b"/v1/files", b"POST", b"Content-Type: multipart/form-data; boundary=fz\r\n", body)


def test_numbers_and_ids_are_read_strictly(server, key, client):
    f = client.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch")
    create = (b'{"input_file_id": "' + f.id.encode() + b'", "endpoint": "/v1/chat/completions", '
              b'"completion_window": "24h", "metadata": {"a": 1e400}}')
    envelope(get(server, client.api_key, b"/v1/batches", b"POST", b"Content-Type: application/json\r\n", create), 400,
             "metadata")                                      # not "metadata...."
    for limit in (b"%2B5", b"1_0", "\u0665".encode()):        # '+5', '1_0', Arabic-Indic 5: int() takes them
        envelope(get(server, key, b"/v1/batches?limit=" + limit.replace("\u0665".encode(), b"%D9%A5")), 400, "limit")
    huge = b'{"input_file_id": "' + b"f" * 1_000_000 + b'", "endpoint": "/v1/chat/completions", "completion_window": "24h"}'
    err = envelope(get(server, key, b"/v1/batches", b"POST", b"Content-Type: application/json\r\n", huge), 400,
                   "input_file_id")
    assert len(err["message"]) < 200
    err = envelope(upload_parts(server, key, [(b'name="expires_after[anchor]"', b"created_at"),
                                              (b'name="expires_after[seconds]"', b"+3600")]), 400)
    assert err["param"] == "expires_after.seconds"


@pytest.mark.parametrize("route", ["content", "results", "events"])
def test_a_head_of_a_streamed_answer_sends_no_body(server, key, client, route):
    # a body after a HEAD's headers is read as the next response on the connection: a file's
    # bytes could pose as the answer to the next request
    import http.client
    f = client.files.create(file=("a.jsonl", io.BytesIO(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}" + b"\n"
                                                      + jsonl([chat_line(1)]))), purpose="batch")
    b = client.batches.create(input_file_id=client.files.create(
        file=("a.jsonl", io.BytesIO(jsonl([chat_line(1)]))), purpose="batch").id,
        endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, b.id, {"completed"})
    target, headers = {"content": (f"/v1/files/{f.id}/content", {}),
                       "results": (f"/v1/batches/{b.id}/results", {}),
                       "events": (f"/v1/batches/{b.id}/events", {"Accept": "text/event-stream"})}[route]
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    auth = {"Authorization": f"Bearer {client.api_key}"}
    try:
        conn.request("HEAD", target, headers={**auth, **headers})
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b""
        conn.request("GET", "/v1/batches?limit=1", headers=auth)     # the same connection, next
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["object"] == "list"
    finally:
        conn.close()


def test_an_upload_sent_as_raw_bytes_hears_how_to_send_it_whatever_its_size(server, key):
    body = jsonl([chat_line(i) for i in range(20_000)])          # ~2 MB: over the 1 MiB of a JSON body
    assert len(body) > 1 << 20
    err = envelope(get(server, key, b"/v1/files", b"POST", b"Content-Type: application/octet-stream\r\n", body), 400)
    assert "multipart/form-data" in err["message"]
