"""Downloads: the filename in Content-Disposition cannot inject a parameter or break the header,
and the bytes are never sniffed into something a browser would run."""

from __future__ import annotations

import email.message
import urllib.parse
import urllib.request

import pytest

from conftest import chat_line, jsonl


def upload_named(server, key: str, filename_star: str) -> str:
    """An upload whose filename comes as RFC 5987 `filename*` (percent-encoded UTF-8), the way a
    client sends a name that a quoted string cannot carry."""
    import json
    boundary = "nameb"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename*=utf-8''{filename_star}\r\n\r\n").encode() + jsonl([chat_line(1)]) \
        + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(server.base_url + "/files", data=body, method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())["id"]


def download_headers(server, key: str, file_id: str):
    req = urllib.request.Request(f"{server.base_url}/files/{file_id}/content",
                                 headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req) as r:
        return r.status, r.headers, r.read()


@pytest.mark.parametrize("name", ['evil".jsonl; filename="x.html', "two\r\nSet-Cookie: a=b.jsonl", "naïve ü.jsonl"])
def test_content_disposition_escapes_the_filename(server, new_key, name):
    key = new_key()
    file_id = upload_named(server, key, urllib.parse.quote(name, safe=""))
    status, headers, body = download_headers(server, key, file_id)
    assert status == 200 and body == jsonl([chat_line(1)])
    disposition = headers["Content-Disposition"]
    assert "\r" not in disposition and "\n" not in disposition and headers.get("Set-Cookie") is None
    # two parameters, no more (RFC 6266): an ASCII fallback without a quote, and the whole name
    kind, fallback, whole = disposition.split("; ")
    assert kind == "attachment" and fallback.startswith('filename="') and fallback.endswith('"')
    assert '"' not in fallback[len('filename="'):-1] and whole.startswith("filename*=UTF-8''")
    assert ";" not in fallback and all(" " <= c <= "~" for c in fallback)
    # what a browser shows (RFC 6266: filename* first, RFC 5987 decoding): the name as uploaded
    charset, _, encoded = whole.removeprefix("filename*=").partition("''")
    assert charset == "UTF-8" and urllib.parse.unquote(encoded, encoding="utf-8", errors="strict") == name
    # and Python's own parser of such headers reads the whole name from filename* alone
    message = email.message.Message()
    message["Content-Disposition"] = f"{kind}; {whole}"
    assert message.get_filename() == name


def test_downloads_are_not_sniffed(client, server):
    import io
    f = client.files.create(file=("a.jsonl", io.BytesIO(b"<html><script>alert(1)</script>\n")), purpose="batch")
    response = client.files.with_raw_response.content(f.id)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-type"] == "application/jsonl"
