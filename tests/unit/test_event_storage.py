"""The stored form of an event (events.data, migrations/070): large events are zstd frames of
their JSON, small ones their JSON, and every reader gets the same event back from either."""

from __future__ import annotations

import base64
import os

import msgspec

from eventbatch import events as ev, result_lines


def _answer(body: bytes) -> ev.RequestSucceeded:
    return ev.RequestSucceeded(index=7, custom_id="req-7", status_code=200, request_id="req_x", attempts=[],
                               body=msgspec.Raw(msgspec.json.encode({"embedding": body.decode()})))


def test_a_small_event_is_stored_as_its_json():
    e = _answer(b"short")
    json = ev.encode(e)
    assert len(json) < ev.COMPRESS_FROM and ev.stored(json) == json
    assert ev.decode(ev.stored(json)) == e


def test_a_base64_answer_is_stored_smaller_than_its_json_and_reads_back_the_same():
    # What pglz could not shrink (the reason for the stored form): base64 of random bytes.
    e = _answer(base64.b64encode(os.urandom(3072)))
    json = ev.encode(e)
    data = ev.stored(json)
    assert len(data) < 0.8 * len(json) and not data.startswith(b"{")
    assert ev.plain(data) == json and ev.decode(data) == e
    # The output line is the same bytes from either form: downloads and /results do not change.
    assert result_lines.line_of_event("batch_1", data) == result_lines.line_of_event("batch_1", json)


def test_what_does_not_shrink_stays_json():
    raw = os.urandom(5000)                      # not JSON, but no frame can be smaller than it
    assert ev.stored(raw) is raw


def test_events_stored_before_compression_read_as_they_are():
    # A log written before migrations/070 holds only JSON, of any size: plain() passes it through.
    json = ev.encode(_answer(b"x" * 10_000))
    assert ev.plain(json) is json
