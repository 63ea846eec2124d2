"""The fold knows each output and error file's exact size (SPEC §12.5): the sum of its lines'
lengths, the same whether folded live (the recorder) or by `projections rebuild`, which folds
outcomes from their summaries (no body, no attempts)."""

from __future__ import annotations

import msgspec

from eventbatch import batch as domain, events as ev, views
from eventbatch.result_lines import output_line


def outcomes() -> list[ev.Event]:
    body = msgspec.Raw(msgspec.json.encode({"object": "chat.completion", "choices": [{"text": "ünï \"q\" \n"}]}))
    return [
        ev.RequestSucceeded(index=0, custom_id="a", status_code=200, body=body, request_id="req_1",
                            attempts=[ev.Attempt(at=1.0, duration_ms=3, status_code=200)],
                            usage=ev.Usage(input_tokens=3, output_tokens=2, total_tokens=5)),
        ev.RequestSucceeded(index=1, custom_id='quote"d-ü', status_code=201, body=body, attempts=[]),
        ev.RequestFailed(index=2, custom_id="c", status_code=400, request_id="req_3",
                         body=msgspec.Raw(b'{"error":{"message":"no"}}'), attempts=[ev.Attempt(at=1, duration_ms=1)]),
        domain.unfinished_outcome("cancelled", 3, "d"),
        ev.RequestFailed(index=4, custom_id="e", error_code="request_timeout", error_message="took too long"),
    ]


def created() -> domain.BatchState:
    return domain.evolve(None, ev.BatchCreated(batch_id="batch_x", project="p", input_file_id="file-1",
                                               endpoint="/v1/chat/completions", completion_window="24h", at=1.0,
                                               expires_at=2))


def test_the_fold_sums_the_lines_of_each_file():
    state = domain.fold(created(), outcomes())
    out = sum(len(output_line("batch_x", o)) for o in outcomes() if isinstance(o, ev.RequestSucceeded))
    err = sum(len(output_line("batch_x", o)) for o in outcomes() if isinstance(o, ev.RequestFailed))
    assert (state.output_bytes, state.error_bytes) == (out, err) and out > 0 and err > 0


def test_the_rebuild_fold_gets_the_same_sizes_and_view():
    live = domain.fold(created(), outcomes())
    decode = views.BATCHES.decode
    # from an outcome's summary (no body: a stand-in of its length), and from an event recorded
    # before summaries were kept (decoded without its attempts)
    from_summary = domain.fold(created(), [decode(ev.type_tag(o), None, ev.summarize(o)) for o in outcomes()])
    from_data = domain.fold(created(), [decode(ev.type_tag(o), ev.encode(o), None) for o in outcomes()])
    assert from_summary == live and from_data == live


def test_a_view_from_before_sizes_were_kept_stays_unknown():
    # decoded from an old doc without the fields: None, and the finalizer measures from the log
    old = msgspec.json.decode(msgspec.json.encode({"id": "batch_x", "project": "p"}), type=domain.BatchState)
    assert old.output_bytes is None
    assert domain.fold(old, outcomes()).output_bytes is None


def test_line_size_is_the_length_of_the_line():
    from eventbatch.result_lines import line_size
    for batch_id in ("batch_x", "batch_" + "f" * 24):
        for o in outcomes():
            assert line_size(o) == len(output_line(batch_id, o)), o
