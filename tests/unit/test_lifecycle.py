"""Every arrow of SPEC §5, and the odd orders, through the pure domain alone.

A small driver plays the part of the callers (API, validator, workers, finalizer): it gathers
facts, asks the domain, and appends exactly what the domain returns, as the real callers do. The
invariants of SPEC §6 are checked on every terminal state the driver reaches."""

from __future__ import annotations

import pytest

from eventbatch import batch as domain, events as ev

CREATED_AT, WINDOW = 1000.0, 1000


class Run:
    """One batch, its events, and the facts a caller would read from the database."""

    def __init__(self, total: int = 3):
        self.total = total
        self.events: list[ev.Event] = [ev.BatchCreated(
            batch_id="b", project="p", input_file_id="f", endpoint="/v1/chat/completions",
            completion_window="24h", at=CREATED_AT, expires_at=int(CREATED_AT) + WINDOW)]
        self.outcomes: dict[int, ev.Event] = {}
        self.leases = 0          # chunks a worker holds
        self.file_ok = True      # what validating the input file finds

    @property
    def state(self) -> domain.BatchState:
        return domain.fold(None, self.events)

    def append(self, new: list[ev.Event]) -> list[ev.Event]:
        assert not self.state.terminal or not new, "nothing may follow the terminal event (invariant 3)"
        for e in new:
            if isinstance(e, ev.REQUEST_OUTCOMES):
                assert e.index not in self.outcomes, "one terminal outcome per request (invariant 3)"
                self.outcomes[e.index] = e
        self.events += new
        return new

    # --- the callers ------------------------------------------------------------------------

    def validate(self, now: float, ok: bool | None = None) -> list[ev.Event]:
        ok = self.file_ok if ok is None else ok
        if not domain.may_validate(self.state):
            return []
        result: ev.Event = (ev.BatchValidated(total=self.total, model="m", chunks=[ev.ChunkPlan(0, self.total, 0, 1)],
                                              at=now) if ok else
                            ev.BatchValidationFailed(errors=[ev.LineError("invalid_json_line", "bad", None, 1)],
                                                     error_count=1, at=now))
        return self.append(domain.record_validation(self.state, [result], now))

    def cancel(self, now: float) -> list[ev.Event]:
        return self.append(domain.cancel(self.state, now))

    def finish(self, index: int, ok: bool = True) -> list[ev.Event]:
        """A worker records a request's outcome (the recorder drops it once the batch is terminal)."""
        if self.state.terminal or index in self.outcomes:
            return []
        o = (ev.RequestSucceeded(index=index, custom_id=f"r{index}", status_code=200, body=ev.NULL, attempts=[])
             if ok else ev.RequestFailed(index=index, custom_id=f"r{index}", status_code=500, body=ev.NULL))
        return self.append([o])

    def settle(self, now: float) -> domain.Due:
        """The finalizer: facts, decide, append what the domain returns; loops like settle_batch."""
        checked = False
        for _ in range(4):
            s = self.state
            if s.terminal:
                return domain.NOTHING_DUE
            due = domain.settle(s, now=now, open_requests=domain.validated(s) and len(self.outcomes) < self.total,
                                live_leases=self.leases, validation_checked=checked)
            if due.validate_first:
                self.validate(now)
                checked = True
                continue
            if due.events:
                self.append(list(due.events))
                continue
            if due.closing:
                if due.closing != "completed":
                    n = self.state.request_counts.total
                    self.append([domain.unfinished_outcome(due.closing, i, f"r{i}")
                                 for i in range(n) if i not in self.outcomes])
                self.append(domain.closing_events(self.state, due.closing, output_file_id="o", error_file_id="e",
                                                  now=now))
            return due
        return domain.NOTHING_DUE

    def statuses(self) -> list[str]:
        seen, s = [], None
        for e in self.events:
            s = domain.evolve(s, e)
            if not seen or seen[-1] != s.status:
                seen.append(s.status)
        return seen

    def assert_invariants(self) -> None:
        s = self.state
        assert s.terminal
        rc = s.request_counts
        if s.status != "failed":
            assert sorted(self.outcomes) == list(range(rc.total)), "every request exactly once (invariant 1)"
            assert rc.completed + rc.failed == rc.total == self.total, "counts add up (invariant 2)"
        assert rc.completed == sum(isinstance(o, ev.RequestSucceeded) for o in self.outcomes.values())


def test_validating_to_in_progress_to_finalizing_to_completed():
    r = Run()
    r.validate(1001)
    for i in range(3):
        assert r.settle(1002).nothing
        r.finish(i, ok=i != 1)
    r.settle(1003)
    assert r.statuses() == ["validating", "in_progress", "finalizing", "completed"]
    r.assert_invariants()
    s = r.state
    assert (s.in_progress_at, s.finalizing_at, s.completed_at) == (1001, 1003, 1003)
    assert (s.request_counts.completed, s.request_counts.failed) == (2, 1)


def test_every_request_failing_is_still_completed():
    r = Run()
    r.validate(1001)
    for i in range(3):
        r.finish(i, ok=False)
    r.settle(1002)
    assert r.state.status == "completed" and r.state.request_counts.failed == 3
    r.assert_invariants()


def test_validating_to_failed():
    r = Run()
    r.validate(1001, ok=False)
    assert r.statuses() == ["validating", "failed"]
    assert r.state.failed_at == 1001 and r.state.errors["data"][0]["code"] == "invalid_json_line"
    assert r.settle(5000).nothing
    with pytest.raises(domain.Conflict):
        r.cancel(5000)


def test_in_progress_to_expired_keeps_finished_work():
    r = Run()
    r.validate(1001)
    r.finish(0)
    assert r.settle(1999).nothing                       # before expires_at: nothing due
    r.settle(2000)
    assert r.statuses() == ["validating", "in_progress", "expired"]
    r.assert_invariants()
    assert r.outcomes[0].__class__ is ev.RequestSucceeded
    assert {r.outcomes[i].error_code for i in (1, 2)} == {"batch_expired"}
    assert r.state.expired_at == 2000


def test_expiry_waits_for_leases_then_gives_up_after_the_grace():
    r = Run()
    r.validate(1001)
    r.leases = 1
    assert r.settle(2000).nothing                       # a worker is flushing what it holds
    r.finish(0)                                         # ...and its result lands, kept
    assert r.settle(2000 + domain.EXPIRY_GRACE_SECONDS - 1).nothing
    r.settle(2000 + domain.EXPIRY_GRACE_SECONDS)        # a dead worker holds it no longer
    assert r.state.status == "expired" and isinstance(r.outcomes[0], ev.RequestSucceeded)
    r.assert_invariants()


@pytest.mark.parametrize("validated_first", [True, False])
def test_cancel_to_cancelled_keeps_finished_work(validated_first):
    r = Run()
    if validated_first:
        r.validate(1001)
        r.finish(2)
    r.cancel(1002)
    assert r.state.status == "cancelling" and r.state.cancelling_at == 1002
    assert r.cancel(1003) == []                         # cancelling a cancelling batch: as is
    r.settle(1004)
    assert r.state.status == "cancelled" and r.state.cancelled_at == 1004
    r.assert_invariants()
    expected = {0, 1} if validated_first else {0, 1, 2}
    assert {i for i, o in r.outcomes.items() if getattr(o, "error_code", None) == "batch_cancelled"} == expected


def test_cancel_waits_for_live_leases():
    r = Run()
    r.validate(1001)
    r.cancel(1002)
    r.leases = 2
    assert r.settle(1003).nothing
    r.finish(0)                                         # a request in flight finishes: kept
    r.leases = 0
    r.settle(1004)
    assert r.state.status == "cancelled" and isinstance(r.outcomes[0], ev.RequestSucceeded)
    r.assert_invariants()


def test_a_late_finish_after_cancel_becomes_cancelled_not_completed():
    r = Run()
    r.validate(1001)
    r.finish(0)
    r.cancel(1002)
    r.finish(1)
    r.finish(2)                                         # every request finished after the cancel
    r.settle(1003)
    assert r.statuses()[-2:] == ["cancelling", "cancelled"]
    r.assert_invariants()


def test_a_late_expiry_after_cancel_becomes_cancelled():
    r = Run()
    r.validate(1001)
    r.cancel(1002)
    r.settle(9999)                                      # the window passed meanwhile
    assert r.state.status == "cancelled"
    r.assert_invariants()


def test_expiry_while_finalizing_completes():
    r = Run()
    r.validate(1001)
    for i in range(3):
        r.finish(i)
    r.append(list(domain.settle(r.state, now=1999, open_requests=False, live_leases=0).events))
    assert r.state.status == "finalizing"
    r.settle(5000)                                      # the finalizer ran only after expires_at
    assert r.statuses()[-2:] == ["finalizing", "completed"]
    r.assert_invariants()


def test_every_request_done_just_as_the_window_passes_completes():
    r = Run()
    r.validate(1001)
    for i in range(3):
        r.finish(i)
    r.settle(2500)
    assert r.state.status == "completed"


def test_cancel_during_validation_validates_first_so_every_request_is_accounted_for():
    r = Run()
    r.cancel(1001)                                      # still validating
    assert r.state.status == "cancelling" and r.state.request_counts.total == 0
    due = domain.settle(r.state, now=1002, open_requests=False, live_leases=0)
    assert due.validate_first and not due.closing
    r.settle(1002)
    assert r.state.status == "cancelled" and r.state.request_counts.total == 3
    r.assert_invariants()


def test_cancel_during_a_validation_that_fails_ends_cancelled_not_failed():
    r = Run()
    r.file_ok = False
    r.cancel(1001)
    r.validate(1002)                                    # dropped: cancelling only leads to cancelled
    assert r.state.status == "cancelling"
    r.settle(1003)
    assert r.state.status == "cancelled" and r.state.request_counts.total == 0


def test_expiry_during_validation_validates_first_then_expires_with_every_request():
    r = Run()
    assert r.settle(2500).nothing                       # no validating -> expired arrow
    assert domain.validation_due(r.state)
    r.validate(2500)                                    # validated late...
    r.settle(2500)                                      # ...then expired with every request accounted for
    assert r.statuses() == ["validating", "in_progress", "expired"]
    r.assert_invariants()
    assert {o.error_code for o in r.outcomes.values()} == {"batch_expired"}


def test_terminal_states_never_change():
    for make in (lambda r: (r.validate(1001, ok=False)),
                 lambda r: (r.validate(1001), [r.finish(i) for i in range(3)], r.settle(1002)),
                 lambda r: (r.validate(1001), r.settle(2000)),
                 lambda r: (r.cancel(1001), r.settle(1002))):
        r = Run()
        make(r)
        s = r.state
        assert s.terminal
        n = len(r.events)
        assert r.settle(99999).nothing
        assert r.validate(99999) == [] and r.finish(0) == []
        with pytest.raises(domain.Conflict):
            r.cancel(99999)
        assert len(r.events) == n and r.state == s


def test_closing_events_refuse_an_arrow_spec_does_not_have():
    r = Run()
    with pytest.raises(domain.Conflict):
        domain.closing_events(r.state, "expired", output_file_id=None, error_file_id=None, now=1)   # validating
    r.validate(1001)
    with pytest.raises(domain.Conflict):
        domain.closing_events(r.state, "completed", output_file_id=None, error_file_id=None, now=1)  # not finalizing
    with pytest.raises(domain.Conflict):
        domain.closing_events(r.state, "cancelled", output_file_id=None, error_file_id=None, now=1)  # not cancelling


@pytest.mark.parametrize("status,expires_at,now,reason", [
    ("in_progress", 2000, 1500, None),
    ("in_progress", 2000, 2000, "expired"),
    ("cancelling", 2000, 1500, "cancelled"),
    ("cancelled", 2000, 1500, "cancelled"),
    ("expired", 2000, 2500, "expired"),
    ("finalizing", 2000, 1500, "ended"),
    ("completed", 2000, 2500, "ended"),
    (None, None, 1500, "ended"),                        # the batch is gone
])
def test_stop_reason_for_workers(status, expires_at, now, reason):
    assert domain.stop_reason(status, expires_at, now) == reason


def test_unfinished_outcomes_keep_their_attempts():
    a = [ev.Attempt(at=1.0, duration_ms=5, status_code=503)]
    o = domain.unfinished_outcome("cancelled", 4, "r4", a)
    assert (o.index, o.custom_id, o.error_code, o.attempts) == (4, "r4", "batch_cancelled", a)
    assert domain.unfinished_outcome("expired", 0, "r0").error_code == "batch_expired"


def test_status_lists_come_from_one_place():
    assert set(domain.STATUSES) == domain.OPEN | domain.TERMINAL and not domain.OPEN & domain.TERMINAL
    assert domain.RUNNABLE <= domain.OPEN and domain.CANCELLABLE <= domain.OPEN
