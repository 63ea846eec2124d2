"""The domain's due times (batch.due_at, the sweepers' index) and the end of a batch whose window
cut requests short after every request had its outcome."""

from __future__ import annotations

from eventbatch import batch as domain, events as ev

AT = 1000.0


def _created(window: int = 100) -> list[ev.Event]:
    return [ev.BatchCreated(batch_id="b", project="p", input_file_id="f", endpoint="/v1/chat/completions",
                            completion_window="24h", at=AT, expires_at=int(AT) + window)]


def _validated(total: int = 2) -> list[ev.Event]:
    return [ev.BatchValidated(total=total, model="m", chunks=[ev.ChunkPlan(0, total, 0, 10)], at=AT + 1),
            ev.BatchStarted(at=AT + 1)]


def _done(index: int) -> ev.Event:
    return ev.RequestSucceeded(index=index, custom_id=f"c{index}", status_code=200, body=ev.NULL, attempts=[])


def test_due_times_follow_the_state():
    s = domain.fold(None, _created())
    assert domain.due_at(s) == AT                                    # validation: due at once
    s = domain.fold(s, _validated())
    assert domain.due_at(s) == AT + 100                              # running: due at expires_at
    s = domain.fold(s, [_done(0)])
    assert domain.due_at(s) == AT + 100
    s = domain.fold(s, [_done(1)])
    assert domain.due_at(s) == AT + 1                                # every outcome in: finalize now
    s = domain.fold(s, [ev.BatchFinalizing(at=AT + 2)])
    assert domain.due_at(s) == AT + 2
    s = domain.fold(s, domain.closing_events(s, "completed", output_file_id="o", error_file_id=None, now=AT + 3))
    assert domain.due_at(s) is None                                  # terminal: nothing is ever due
    c = domain.fold(None, _created() + [ev.BatchCancelling(at=AT + 5)])
    assert domain.due_at(c) == AT + 5


def test_requests_cut_short_by_the_window_make_the_batch_expired_not_completed():
    """The workers stop at expires_at and record what was in flight as batch_expired (with its
    attempts): then every request has an outcome, yet the batch expired."""
    s = domain.fold(None, _created() + _validated())
    cut = domain.unfinished_outcome("expired", 1, "c1", [ev.Attempt(at=AT + 99, duration_ms=5, error="aborted")])
    s = domain.fold(s, [_done(0), cut])
    assert s.expired_requests == 1
    due = domain.settle(s, now=AT + 101, open_requests=False, live_leases=0)
    assert due.closing == "expired" and not due.events
    # finished in time, settled just after the window: completed
    t = domain.fold(None, _created() + _validated() + [_done(0), _done(1)])
    due = domain.settle(t, now=AT + 101, open_requests=False, live_leases=0)
    assert due.closing is None and isinstance(due.events[0], ev.BatchFinalizing)
