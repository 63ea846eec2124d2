"""The domain's outcome for a request of a poison chunk (batch.unreadable_outcome)."""

from eventbatch import batch as domain, events as ev
from eventbatch.result_lines import output_line


def test_an_unreadable_request_fails_with_its_own_code_and_says_what_to_do():
    o = domain.unreadable_outcome(50, "req-50")
    assert isinstance(o, ev.RequestFailed) and o.error_code == domain.INPUT_UNREADABLE == "input_unreadable"
    assert (o.index, o.custom_id, o.status_code, o.attempts) == (50, "req-50", None, [])
    assert "Request 51 of the input file" in o.error_message
    assert "damaged" in o.error_message and "Upload the file again" in o.error_message
    # an error line (SPEC §3: nothing usable came back), counted as failed
    assert b'"response":null' in output_line("batch_x", o) and domain.counted_as(o) == "failed"


def test_the_number_of_tries_is_bounded_but_more_than_one():
    assert 1 < domain.POISON_AFTER <= 5
