"""The batch state machine, pure: decide(state, command) -> events; evolve(state, event) -> state.

Every status transition of a batch is decided here and nowhere else. The state is also the
batch view (the projection stored in batch_view.doc), so the API, the inline projection and
`projections rebuild` all fold with the same `evolve`.
"""

from __future__ import annotations

import math

import msgspec

from . import events as ev
from .result_lines import line_size

# The statuses of SPEC §5. Every list of statuses that SQL or metrics need comes from here.
STATUSES = ("validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})
OPEN = frozenset(STATUSES) - TERMINAL
VALIDATING = "validating"
RUNNABLE_STATUS = "in_progress"
RUNNABLE = frozenset({RUNNABLE_STATUS})   # requests of these batches may be sent upstream
CANCELLABLE = frozenset({"validating", "in_progress"})   # SPEC §5: finalizing is past cancelling
# The endpoints a batch may target (SPEC section 1: OpenAI's list).
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/moderations",
             "/v1/images/generations", "/v1/images/edits", "/v1/videos")
# After expires_at, how long settling waits for workers to record what they hold (they stop
# starting requests at expires_at and flush within a second or two): finished work is kept, and
# a worker that died does not hold the batch open longer than this.
EXPIRY_GRACE_SECONDS = 15.0
BATCH_EXPIRED = "batch_expired"   # the error code of a request the window cut short


class Conflict(Exception):
    """The command does not fit the batch's status (HTTP 409)."""


class NothingToRetry(Exception):
    """A retry of a batch none of whose requests failed (HTTP 400)."""


class RequestCounts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchState(msgspec.Struct, kw_only=True):
    id: str
    project: str
    version: int = 0
    status: str = "validating"
    endpoint: str = ""
    model: str | None = None
    errors: dict | None = None
    input_file_id: str = ""
    completion_window: str = "24h"
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int = 0
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = msgspec.field(default_factory=RequestCounts)
    usage: ev.Usage = ev.Usage()
    metadata: dict[str, str] | None = None
    output_expires_after: int | None = None
    chunk_count: int = 0
    retry_of: str | None = None
    # The exact sizes of the output and error files: the lines' lengths, summed as outcomes are
    # folded, so closing the batch writes no copy of its results (SPEC §12.5). None: a view
    # folded before sizes were kept (the finalizer measures those from the log).
    output_bytes: int | None = None
    error_bytes: int | None = None
    # Requests the window cut short (batch_expired outcomes, recorded by the workers as they stop
    # at expires_at): a batch with any has expired, even once every request has its outcome.
    expired_requests: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def _ts(at: float) -> int:
    return int(math.floor(at))


def _add_usage(a: ev.Usage, b: ev.Usage) -> ev.Usage:
    return ev.Usage(
        input_tokens=a.input_tokens + b.input_tokens,
        cached_tokens=a.cached_tokens + b.cached_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        reasoning_tokens=a.reasoning_tokens + b.reasoning_tokens,
        total_tokens=a.total_tokens + b.total_tokens,
    )


def evolve(state: BatchState | None, event: ev.Event) -> BatchState:
    """Fold one event of a batch (batch-level or request outcome) into its state."""
    match event:
        case ev.BatchCreated():
            return BatchState(
                id=event.batch_id, project=event.project, endpoint=event.endpoint,
                input_file_id=event.input_file_id, completion_window=event.completion_window,
                created_at=_ts(event.at), expires_at=event.expires_at, metadata=event.metadata,
                output_expires_after=event.output_expires_after, retry_of=event.retry_of, version=1,
                output_bytes=0, error_bytes=0,
            )
    assert state is not None, f"{type(event).__name__} before batch_created"
    s = msgspec.structs.replace(state)
    match event:
        case ev.BatchValidated():
            s.model = event.model
            s.request_counts = RequestCounts(total=event.total)
            s.chunk_count = len(event.chunks)
        case ev.BatchStarted():
            s.status, s.in_progress_at = "in_progress", _ts(event.at)
        case ev.BatchValidationFailed():
            s.status, s.failed_at = "failed", _ts(event.at)
            s.errors = {"object": "list", "data": [msgspec.structs.asdict(e) for e in event.errors]}
        case ev.RequestSucceeded():
            rc = s.request_counts
            s.request_counts = RequestCounts(rc.total, rc.completed + 1, rc.failed)
            s.usage = _add_usage(s.usage, event.usage)
            if s.output_bytes is not None:
                s.output_bytes += line_size(event)
        case ev.RequestFailed():
            rc = s.request_counts
            s.request_counts = RequestCounts(rc.total, rc.completed, rc.failed + 1)
            if s.error_bytes is not None:
                s.error_bytes += line_size(event)
            if event.error_code == BATCH_EXPIRED:
                s.expired_requests += 1
        case ev.BatchFinalizing():
            s.status, s.finalizing_at = "finalizing", _ts(event.at)
        case ev.BatchOutputWritten():
            s.output_file_id, s.error_file_id = event.output_file_id, event.error_file_id
        case ev.BatchCompleted():
            s.status, s.completed_at = "completed", _ts(event.at)
        case ev.BatchExpired():
            s.status, s.expired_at = "expired", _ts(event.at)
        case ev.BatchCancelling():
            s.status, s.cancelling_at = "cancelling", _ts(event.at)
        case ev.BatchCancelled():
            s.status, s.cancelled_at = "cancelled", _ts(event.at)
        case _:
            raise TypeError(f"not a batch event: {type(event).__name__}")
    if not isinstance(event, ev.REQUEST_OUTCOMES):
        s.version += 1
    return s


def counted_as(outcome: ev.RequestSucceeded | ev.RequestFailed) -> str:
    """The request_counts field a request's outcome adds to (SPEC §3: output line or error line)."""
    return "completed" if isinstance(outcome, ev.RequestSucceeded) else "failed"


def fold(state: BatchState | None, events: list[ev.Event]) -> BatchState:
    for e in events:
        state = evolve(state, e)
    assert state is not None
    return state


# --- decisions ---------------------------------------------------------------------------

def record_validation(state: BatchState, result_events: list[ev.Event], now: float) -> list[ev.Event]:
    """The background validation finished with BatchValidated or BatchValidationFailed."""
    [outcome] = result_events
    if state.status == "validating":
        if isinstance(outcome, ev.BatchValidated):
            return [outcome, ev.BatchStarted(at=now)]
        return [outcome]
    if state.status == "cancelling" and isinstance(outcome, ev.BatchValidated) and not validated(state):
        # Cancelled while validating: keep the request list so every request is accounted for
        # as batch_cancelled; a failed validation is dropped (cancelling only leads to cancelled).
        return [outcome]
    return []


def check_retry(state: BatchState) -> None:
    """A retry (SPEC §12.2) needs a batch that has ended, with requests in its error file."""
    if not state.terminal:
        raise Conflict(f"Batch '{state.id}' is still {state.status}; retry it once it has ended "
                       "(completed, expired, cancelled or failed).")
    if state.request_counts.failed == 0:
        if state.errors is not None:
            raise NothingToRetry(f"Batch '{state.id}' failed validation, so none of its requests ran; fix the "
                                 "input file (see the batch's errors) and create a new batch.")
        raise NothingToRetry(f"Batch '{state.id}' has no failed requests; there is nothing to retry.")


def cancel(state: BatchState, now: float) -> list[ev.Event]:
    if state.status == "cancelling":
        return []
    if state.status not in CANCELLABLE:
        raise Conflict(f"Cannot cancel a batch with status '{state.status}'.")
    return [ev.BatchCancelling(at=now)]


class Due(msgspec.Struct, frozen=True):
    """What settling a batch does now, decided from its state and the facts the caller gathered.

    validate_first: the batch was cancelled before its validation recorded its requests;
        validate, so every request of a valid file gets its batch_cancelled line, then ask again.
    events: to append now (BatchFinalizing).
    closing: 'completed', 'cancelled' or 'expired': close the batch now — outcomes for the
        unfinished requests (unfinished_outcome), the output files, then closing_events."""
    validate_first: bool = False
    events: tuple[ev.Event, ...] = ()
    closing: str | None = None

    @property
    def nothing(self) -> bool:
        return not (self.validate_first or self.events or self.closing)


NOTHING_DUE = Due()


def validated(state: BatchState) -> bool:
    """Its validation recorded the requests (a valid file has at least one line)."""
    return state.request_counts.total > 0 or state.chunk_count > 0


def settle(state: BatchState, *, now: float, open_requests: bool, live_leases: int,
           validation_checked: bool = False) -> Due:
    """Every rule of a batch's end (SPEC §5). open_requests: some chunk is not done yet;
    live_leases: chunks a worker holds right now; validation_checked: a validation was just
    tried for a cancelled batch (so do not ask for it again)."""
    match state.status:
        case "cancelling":
            if not validated(state) and not validation_checked:
                return Due(validate_first=True)
            if live_leases:
                return NOTHING_DUE   # workers are letting go of their requests; they settle it after
            return Due(closing="cancelled")
        case "in_progress" if not open_requests:
            if state.expired_requests:
                # Every request has its outcome, but the window cut some short (the workers
                # recorded them batch_expired with their attempts): the batch expired.
                return Due(closing="expired")
            # Every request finished in time: complete, even if the window just passed.
            return Due(events=(ev.BatchFinalizing(at=now),))
        case "in_progress" if state.expires_at is not None and now >= state.expires_at:
            # Like cancel: the workers stop at expires_at and record what finished; wait for them
            # (bounded), so results they hold are kept, not dropped.
            if live_leases and now < state.expires_at + EXPIRY_GRACE_SECONDS:
                return NOTHING_DUE
            return Due(closing="expired")
        case "finalizing":
            # Past in_progress with every request done: expiry no longer applies.
            return Due(closing="completed")
    # validating: validation is due work of its own (validation_due); a batch whose window
    # passed while it validated is validated first and then expires with every request
    # accounted for (there is no validating → expired arrow).
    return NOTHING_DUE


def validation_due(state: BatchState) -> bool:
    """Waiting for its validation (the sweeper's due work)."""
    return state.status == "validating" and not validated(state)


def due_at(state: BatchState) -> float | None:
    """From when the batch has due work (SPEC §11), by its state alone: the sweepers' index
    (table batch_due, a projection like the view). A validation is due from the create, a cancel's
    settling from cancelling_at, completion once every request has an outcome, expiry at
    expires_at; a terminal batch has none (None). Being due is a reason to look: settle() still
    decides what, if anything, happens (it may wait for leases)."""
    match state.status:
        case "validating":
            return float(state.created_at)
        case "cancelling":
            return float(state.cancelling_at or state.created_at)
        case "finalizing":
            return float(state.finalizing_at or state.created_at)
        case "in_progress":
            rc = state.request_counts
            if rc.completed + rc.failed >= rc.total:
                return float(state.in_progress_at or state.created_at)
            return None if state.expires_at is None else float(state.expires_at)
    return None


def may_validate(state: BatchState) -> bool:
    """A validation run now would be recorded: validating, or cancelled before it was validated."""
    return state.status in ("validating", "cancelling") and not validated(state)


CUT_SHORT = frozenset({"cancelled", "expired"})   # endings that give unfinished requests an outcome
_CLOSING = {"cancelled": ev.BatchCancelled, "expired": ev.BatchExpired, "completed": ev.BatchCompleted}
_CLOSES_FROM = {"cancelled": {"cancelling"}, "expired": {"in_progress"}, "completed": {"finalizing"}}


def closing_events(state: BatchState, kind: str, *, output_file_id: str | None, error_file_id: str | None,
                   now: float) -> list[ev.Event]:
    """The batch's last events: where its results are, then its terminal event."""
    if state.status not in _CLOSES_FROM[kind]:
        raise Conflict(f"a batch with status '{state.status}' cannot become '{kind}'")
    return [ev.BatchOutputWritten(output_file_id=output_file_id, error_file_id=error_file_id, at=now),
            _CLOSING[kind](at=now)]


def unfinished_error(kind: str) -> tuple[str, str]:
    """The error line given to requests that never finished, by how the batch ended."""
    if kind == "cancelled":
        return "batch_cancelled", "The batch was cancelled before this request was completed."
    return BATCH_EXPIRED, "The batch expired before this request was completed."


def unfinished_outcome(kind: str, index: int, custom_id: str,
                       attempts: list[ev.Attempt] | tuple = ()) -> ev.RequestFailed:
    """The outcome of a request the batch's end cut short ('cancelled' or 'expired'), with the
    attempts it had (kept in the log, SPEC §7)."""
    code, message = unfinished_error(kind)
    return ev.RequestFailed(index=index, custom_id=custom_id, attempts=list(attempts),
                            error_code=code, error_message=message)


# A chunk whose input lines cannot be read back from storage (its bytes in file_blobs damaged or
# missing) is given back and tried again this many times in all, then its requests fail with
# INPUT_UNREADABLE. More than once: a read can meet a piece mid-repair by an operator; bounded: the
# bytes do not heal by themselves, and a chunk retried forever keeps its batch open (a poison chunk).
POISON_AFTER = 3
INPUT_UNREADABLE = "input_unreadable"


def unreadable_outcome(index: int, custom_id: str) -> ev.RequestFailed:
    """The outcome of a request whose input line could not be read back from storage (its chunk
    failed POISON_AFTER reads). `custom_id` is what could still be read of the line, or "" when
    nothing could: validation refuses an empty custom_id, so "" never names a real request (the
    line id, batch_req_…, and the line number in the message still tell the requests apart)."""
    return ev.RequestFailed(
        index=index, custom_id=custom_id, error_code=INPUT_UNREADABLE,
        error_message=f"Request {index + 1} of the input file (counting requests, not blank lines) was not sent: "
                      "the stored copy of the input file is damaged, so it could not be read back. Upload the file again and "
                      "create a new batch from it with the requests that failed.")


def stop_reason(status: str | None, expires_at: float | None, now: float) -> str | None:
    """Why a worker must stop a batch's requests now: 'cancelled', 'expired', 'ended' (the
    batch is past running for another reason: finished, or gone), or None (keep going)."""
    if status in ("cancelling", "cancelled"):
        return "cancelled"
    if status == "expired" or (expires_at is not None and now >= expires_at and status not in TERMINAL):
        return "expired"
    if status not in RUNNABLE:
        return "ended"
    return None
