"""The output and error lines of SPEC §3, derived from a request's terminal event. Pure.

A line is a function of the batch id, the request's index and its outcome event alone, so it
is the same at every download, after any rebuild, and in /results while the batch runs. The
batch's fold sums `len(output_line(...))` as outcomes are recorded (batch.evolve): that is how
an output file knows its exact `bytes` without a copy of its bodies (SPEC §12.5)."""

from __future__ import annotations

import msgspec

from . import events as ev, ids

# The two kinds of result by the name the API gives them (?status=succeeded|failed: the type
# tag of the events they come from, request_succeeded and request_failed, without its prefix).
EVENT_TYPE = {t.removeprefix("request_"): t for t in (ev.type_tag_of(ev.RequestSucceeded),
                                                      ev.type_tag_of(ev.RequestFailed))}
SUCCEEDED, FAILED = EVENT_TYPE


class _OutResponse(msgspec.Struct):
    status_code: int
    request_id: str | None
    body: msgspec.Raw


class _OutError(msgspec.Struct):
    code: str
    message: str


class OutputLine(msgspec.Struct):
    id: str
    custom_id: str
    response: _OutResponse | None
    error: _OutError | None


Outcome = ev.RequestSucceeded | ev.RequestFailed
outcome_decoder = msgspec.json.Decoder(Outcome)
_line_encoder = msgspec.json.Encoder()


def output_line(batch_id: str, o: Outcome) -> bytes:
    """One line of the output or error file (SPEC §3), newline included."""
    if isinstance(o, ev.RequestFailed) and o.status_code is None:
        line = OutputLine(ids.request_line_id(batch_id, o.index), o.custom_id, None,
                          _OutError(o.error_code or "upstream_unreachable", o.error_message or ""))
    else:
        line = OutputLine(ids.request_line_id(batch_id, o.index), o.custom_id,
                          _OutResponse(o.status_code, o.request_id, o.body), None)
    return _line_encoder.encode(line) + b"\n"


# Every line id has this length (ids.request_line_id: a fixed-size digest in hex).
_SOME_LINE_ID = ids.request_line_id("batch_", 0)
_NO_BODY = msgspec.Raw(b"")


def line_size(o: Outcome) -> int:
    """len(output_line(batch_id, o)) without building the line: the id's length is fixed and the
    body is copied as it is, so the fold (batch.evolve) neither hashes nor copies a body."""
    if isinstance(o, ev.RequestFailed) and o.status_code is None:
        return len(output_line("", o))
    line = OutputLine(_SOME_LINE_ID, o.custom_id, _OutResponse(o.status_code, o.request_id, _NO_BODY), None)
    return len(_line_encoder.encode(line)) + len(o.body) + 1


def outcome_of(data: bytes) -> Outcome:
    """A stored outcome event (events.data: its JSON, or a zstd frame of it)."""
    return outcome_decoder.decode(ev.plain(data))


def line_of_event(batch_id: str, data: bytes) -> bytes:
    """The line of a stored outcome event."""
    return output_line(batch_id, outcome_of(data))


def kind_of(o: Outcome) -> str:
    return SUCCEEDED if isinstance(o, ev.RequestSucceeded) else FAILED
