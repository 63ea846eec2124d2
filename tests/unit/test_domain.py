"""The pure parts: the batch state machine's decisions, settings validation, upstream helpers."""

from __future__ import annotations

import pytest

from eventbatch import batch as domain, events as ev
from eventbatch.config import SettingsError, load_settings
from eventbatch.projections import FileView
from eventbatch.worker import upstream


def state(status: str, **kw) -> domain.BatchState:
    s = domain.evolve(None, ev.BatchCreated(batch_id="b", project="p", input_file_id="f",
                                            endpoint="/v1/chat/completions", completion_window="24h",
                                            at=1000.0, expires_at=2000))
    s.status = status
    for k, v in kw.items():
        setattr(s, k, v)
    return s


@pytest.mark.parametrize("status", ["validating", "in_progress"])
def test_cancel_records_cancelling(status):
    [e] = domain.cancel(state(status), 1500.0)
    assert isinstance(e, ev.BatchCancelling)


def test_cancel_of_cancelling_is_a_no_op_and_of_others_a_conflict():
    assert domain.cancel(state("cancelling"), 1500.0) == []
    for status in ("finalizing", "completed", "failed", "expired", "cancelled"):
        with pytest.raises(domain.Conflict):
            domain.cancel(state(status), 1500.0)


def due(status: str, now: float, all_done: bool, live_leases: int = 0, **kw) -> str | None:
    """The old settlement() answer, from the new decide: 'finalizing', a closing kind, or None."""
    d = domain.settle(state(status, **kw), now=now, open_requests=not all_done, live_leases=live_leases,
                      validation_checked=True)
    if d.events:
        assert [type(e) for e in d.events] == [ev.BatchFinalizing]
        return "finalizing"
    return d.closing


def test_settlement_order():
    assert due("cancelling", 1500.0, False) == "cancelled"
    assert due("cancelling", 5000.0, True) == "cancelled"   # once cancelling, only cancelled
    assert due("in_progress", 1500.0, False) is None
    assert due("in_progress", 1500.0, True) == "finalizing"
    assert due("in_progress", 2000.0, False) == "expired"
    # every request finished in time: the batch completes even if the window passed meanwhile
    assert due("in_progress", 2000.0, True) == "finalizing"
    assert due("finalizing", 9999.0, False) == "completed"
    for status in domain.TERMINAL:
        assert due(status, 9999.0, True) is None


def test_validation_result_is_dropped_unless_validating_or_cancelled_before_it():
    ok = ev.BatchValidated(total=2, model="m", chunks=[], at=1.0)
    bad = ev.BatchValidationFailed(errors=[], error_count=1, at=1.0)
    assert [type(e) for e in domain.record_validation(state("validating"), [ok], 1.0)] == \
        [ev.BatchValidated, ev.BatchStarted]
    assert domain.record_validation(state("cancelling"), [ok], 1.0) == [ok]   # requests kept for the cancel
    assert domain.record_validation(state("cancelling"), [bad], 1.0) == []    # cancelling never becomes failed
    assert domain.record_validation(state("cancelled"), [ok], 1.0) == []


def test_fold_counts_outcomes_and_usage():
    s = domain.fold(state("in_progress"), [
        ev.RequestSucceeded(index=0, custom_id="a", status_code=200, body=ev.NULL, attempts=[],
                            usage=ev.Usage(input_tokens=3, output_tokens=4, total_tokens=7)),
        ev.RequestFailed(index=1, custom_id="b", error_code="batch_cancelled"),
    ])
    assert (s.request_counts.completed, s.request_counts.failed) == (1, 1)
    assert (s.usage.input_tokens, s.usage.output_tokens, s.usage.total_tokens) == (3, 4, 7)
    assert s.version == 1  # request outcomes live in their own streams


@pytest.mark.parametrize("override", [dict(upstream_concurrency=0), dict(window_seconds=-5),
                                      dict(upstream_concurrency="many"), dict(lease_seconds=0)])
def test_flags_are_range_checked_like_variables(override):
    with pytest.raises(SettingsError):
        load_settings({}, **override)


def test_settings_never_show_the_key():
    s = load_settings({"EVENTBATCH_UPSTREAM_API_KEY": "secret-key-1", "EVENTBATCH_UPSTREAM_URL": "http://h/v1"})
    assert "secret-key-1" not in repr(s)


def test_file_expiry():
    f = FileView(id="f", project="p", bytes=1, created_at=0, expires_at=100, filename="x", purpose="batch")
    assert not f.expired(99.9) and f.expired(100)
    assert not FileView(id="f", project="p", bytes=1, created_at=0, expires_at=None, filename="x",
                        purpose="batch").expired(1e12)


def test_usage_mapping_of_both_api_styles_and_odd_bodies():
    chat = b'{"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,' \
           b'"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":1}}}'
    assert upstream.usage_of(chat) == ev.Usage(5, 2, 7, 1, 12)
    responses = b'{"usage":{"input_tokens":4,"output_tokens":6,"total_tokens":10,' \
                b'"input_tokens_details":{"cached_tokens":1},"output_tokens_details":{"reasoning_tokens":3}}}'
    assert upstream.usage_of(responses) == ev.Usage(4, 1, 6, 3, 10)
    assert upstream.usage_of(b'{"data":[]}') == ev.Usage()
    assert upstream.usage_of(b"not json") is None
    assert upstream.usage_of(b"[" * 5000 + b"]" * 5000) is None   # nested too deep: treated as not JSON
    assert upstream.usage_of(b'{"usage":' * 3000 + b"1" + b"}" * 3000) is None
    assert upstream.usage_of(b"[1, oops") is None                 # the wrong shape, and not JSON either
    assert upstream.usage_of(b"[1, 2]") == ev.Usage()


def test_retry_after_headers():
    assert upstream.retry_after({"retry-after-ms": "250"}) == 0.25
    assert upstream.retry_after({"retry-after": "2"}) == 2.0
    assert upstream.retry_after({"retry-after": "9999"}) == upstream.RETRY_AFTER_CAP
    assert upstream.retry_after({}) is None
    from eventbatch.worker.scheduler import Backoff
    backoff = Backoff(2.0, 300.0)
    assert all(min(300.0, 2.0 * 2 ** (n - 1)) / 2 <= backoff.delay(n) <= min(300.0, 2.0 * 2 ** (n - 1))
               for n in range(1, 30))
