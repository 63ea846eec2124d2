"""The custom_ids given to the requests of a chunk that cannot be read back (worker/queue.py,
ids_by_position): never another request's id, whatever the damage did to the line breaks."""

from __future__ import annotations

import msgspec

from eventbatch.worker.queue import ids_by_position


def chunk(ids: list[str]) -> bytes:
    return b"".join(msgspec.json.encode({"custom_id": c, "method": "POST", "url": "/v1/chat/completions",
                                         "body": {"model": "m"}}) + b"\n" for c in ids)


IDS = [f"req-{i}" for i in range(8)]


def test_intact_lines_keep_their_ids():
    assert ids_by_position(chunk(IDS), 8, whole=True) == IDS


def test_a_lost_newline_leaves_the_ids_after_it_at_their_place():
    data = chunk(IDS)
    first_break = data.index(b"\n", data.index(b'"req-2"'))
    damaged = data[:first_break] + data[first_break + 1:]          # lines 2 and 3 are one line now
    got = ids_by_position(damaged, 8, whole=True)
    assert got == ["req-0", "req-1", "", "", "req-4", "req-5", "req-6", "req-7"]


def test_an_added_newline_does_not_shift_ids_onto_other_requests():
    data = chunk(IDS)
    at = data.index(b'"req-5"')
    damaged = data[:at] + b"\n" + data[at:]                          # line 5 split in two
    got = ids_by_position(damaged, 8, whole=True)
    assert got[:5] == IDS[:5] and got[5] == "" and got[6:] == IDS[6:]
    assert len([c for c in got if c]) == len(set(c for c in got if c))    # no id twice


def test_a_damaged_line_in_place_and_a_short_read():
    data = chunk(IDS).replace(b'{"custom_id":"req-2"', b'{"custom_id":\x00req-2"', 1)
    assert ids_by_position(data, 8, whole=True) == IDS[:2] + [""] + IDS[3:]
    # bytes missing: only the lines from the start can be placed
    cut = chunk(IDS)[:-30]
    assert ids_by_position(cut, 8, whole=False) == IDS[:7] + [""]


def test_lines_that_all_read_but_are_too_few_name_nobody():
    assert ids_by_position(chunk(IDS[:3] + IDS[4:]), 8, whole=True) == [""] * 8
