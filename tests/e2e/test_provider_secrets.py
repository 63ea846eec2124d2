"""The provider key stays secret even when the provider echoes it back: in `x-request-id` (kept
as the output line's request_id, in the events, in the SSE feed) and JSON-escaped in a body
(`\\u0073k-…` is the same string as `sk-…` once decoded, but not the same bytes)."""

from __future__ import annotations

import http.client
import io
import json
from urllib.parse import urlsplit

from conftest import UPSTREAM_KEY, chat_line, jsonl, start_mock, start_server, wait_status
from eventbatch import events as ev


def _decoded_strings(value) -> list[str]:
    """Every string in a JSON value, decoded (escapes resolved), keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_decoded_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _decoded_strings(v)]
    return []


def _sse_text(base_url: str, key: str, batch_id: str) -> str:
    u = urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", f"{u.path}/batches/{batch_id}/events",
                 headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"})
    text = conn.getresponse().read().decode()   # the batch has ended: the feed ends with it
    conn.close()
    return text


def test_a_key_echoed_in_request_id_or_json_escaped_never_lands(start_proc, new_key, fresh_db):
    iso = fresh_db()
    mock = start_mock(start_proc, "--api-key", UPSTREAM_KEY)
    srv = start_server(start_proc, mock.base_url, db_url=iso.url)
    import openai
    key = new_key(db_url=iso.url)
    client = openai.OpenAI(base_url=srv.base_url, api_key=key, max_retries=0, timeout=60)
    lines = [chat_line(i, mock={"echo_key": True}) for i in range(5)] + [chat_line(5)]
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_status(client, b.id, {"completed"}, timeout=60)
    assert done.request_counts.completed == 6

    output = [json.loads(x) for x in client.files.content(done.output_file_id).read().splitlines()]
    echoed = [o for o in output if o["custom_id"] != "req-5"]
    assert len(echoed) == 5
    for o in echoed:
        # the mock did echo it (else this test proves nothing) and it was scrubbed
        assert o["response"]["request_id"] == "req_[redacted]"
        body = o["response"]["body"]
        assert body["echo_first"] == "[redacted]" and body["echo_all"] == "[redacted]"
    for o in output:
        assert not any(UPSTREAM_KEY in s for s in _decoded_strings(o))

    events = [json.loads(ev.plain(bytes(r["data"]))) for r in iso.fetch("SELECT data FROM events WHERE batch_id = $1", b.id)]
    assert len(events) > 6 and not any(UPSTREAM_KEY in s for e in events for s in _decoded_strings(e))

    feed = _sse_text(srv.base_url, key, b.id)
    messages = [json.loads(line[len("data: "):]) for line in feed.splitlines() if line.startswith("data: ")]
    assert any(m["type"] == "request_succeeded" for m in messages)
    assert not any(UPSTREAM_KEY in s for m in messages for s in _decoded_strings(m))
    assert UPSTREAM_KEY not in srv.log()
