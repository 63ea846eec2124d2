"""Every view of the log, as `projections rebuild` knows it: which events each folds, with which
functions (the inline projection's own: batch.evolve, evolve_file, evolve_key), and the tables
it writes, each with the row function its writers use too. shadow.py folds them, rebuild.py
swaps them in. Adding a view, or a table to one, is adding an entry here.
"""

from __future__ import annotations

from typing import Any, Callable

import msgspec

from . import events as ev
from .api_keys import decode_key, evolve_key, key_row
from .batch import evolve
from .projections import batch_row, decode_batch, decode_file, due_row, evolve_file, file_row


class Table(msgspec.Struct, frozen=True):
    """One table a view writes. row(seq, state) is its row (None: none for this state)."""
    name: str
    key: str                               # its primary key column
    columns: tuple[str, ...]               # in the order row() gives them
    row: Callable[[int, Any], tuple | None]
    # The columns the fold decides (all, unless given): others are the service's bookkeeping
    # (batch_due.next_at, the sweepers'), kept as they are unless the row is replaced.
    compared: tuple[str, ...] = ()
    label: str = ""                        # what a row is, in messages, if not the view itself

    @property
    def decided(self) -> tuple[str, ...]:
        return self.compared or self.columns


class View(msgspec.Struct, frozen=True):
    """A fold of the streams '<category>-<id>…' into one state per id, and the tables it writes;
    the first table holds `seq` and `doc`, from which the state is read back (state_of).

    decode(type, data, summary) -> event: data is None for a request outcome, which comes with
    its summary instead (events.OutcomeSummary; rebuild.sql, event_range_for_fold)."""
    noun: str                              # in messages: "batch 123: differs (...)"
    category: str
    key_of: Callable[[str], str]           # the state's id, from the stream of an event
    decode: Callable[[str, bytes | None, bytes | None], ev.Event]
    evolve: Callable[[Any, ev.Event], Any]
    state_of: Callable[[bytes], Any]       # the state back from its doc
    starts: frozenset[str]                 # event types that begin a state
    settled: Callable[[Any], bool]         # expects no more events (may leave memory first)
    tables: tuple[Table, ...]


class _OutcomeLite(msgspec.Struct):
    """An outcome recorded before its summary (migrations/060), as a view needs it: its kind,
    usage and the size of its result line (so the body, passed through as raw bytes); decoding
    skips the attempts."""
    index: int
    custom_id: str
    body: msgspec.Raw = ev.NULL
    status_code: int | None = None
    request_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    usage: ev.Usage = ev.Usage()


_outcome_lite_dec = msgspec.json.Decoder(_OutcomeLite)
_OUTCOME_TYPES = frozenset(t.__struct_config__.tag for t in ev.REQUEST_OUTCOMES)


def _batch_event(etype: str, data: bytes | None, summary: bytes | None) -> ev.Event:
    # A request outcome folds from its summary: no response body moved (rebuild.sql).
    if summary is not None:
        return ev.from_summary(summary)
    if etype not in _OUTCOME_TYPES:
        return ev.decode(data)
    o = _outcome_lite_dec.decode(ev.plain(data))
    if etype == "request_succeeded":
        return ev.RequestSucceeded(index=o.index, custom_id=o.custom_id, status_code=o.status_code or 200,
                                   body=o.body, attempts=[], request_id=o.request_id, usage=o.usage)
    return ev.RequestFailed(index=o.index, custom_id=o.custom_id, status_code=o.status_code, body=o.body,
                            request_id=o.request_id, error_code=o.error_code, error_message=o.error_message)


def whole_event(etype: str, data: bytes | None, summary: bytes | None) -> ev.Event:
    return ev.decode(data)


def _after(prefix: str) -> Callable[[str], str]:
    n = len(prefix)
    return lambda stream: stream[n:]


BATCHES = View(
    noun="batch", category="batch",
    key_of=lambda stream: stream[len("batch-"):].partition("/")[0],   # 'batch-<id>' and 'batch-<id>/<n>'
    decode=_batch_event, evolve=evolve, state_of=decode_batch,
    starts=frozenset({"batch_created"}), settled=lambda s: s.terminal,
    tables=(Table("batch_view", "id", ("id", "project", "seq", "status", "version", "doc"), batch_row),
            Table("batch_due", "batch_id", ("batch_id", "due_at", "next_at"), due_row,
                  compared=("batch_id", "due_at"), label="due time")))
FILES = View(
    noun="file", category="file", key_of=_after("file-"), decode=whole_event, evolve=evolve_file,
    state_of=decode_file, starts=frozenset({"file_created"}), settled=lambda f: f.deleted,
    tables=(Table("file_view", "id", ("id", "project", "seq", "purpose", "deleted", "version", "expires_at", "doc",
                                      "purge_after"), file_row),))
KEYS = View(
    noun="key", category="key", key_of=_after("key-"), decode=whole_event, evolve=evolve_key,
    state_of=decode_key, starts=frozenset({"api_key_created"}), settled=lambda k: k.revoked_at is not None,
    tables=(Table("api_keys", "id", ("id", "project", "seq", "revoked", "version", "doc"), key_row),))

# In the lock order of sql/views.sql: the rebuild locks their tables in this order.
VIEWS: tuple[View, ...] = (BATCHES, FILES, KEYS)


def tables(views: tuple[View, ...] = VIEWS) -> tuple[Table, ...]:
    return tuple(t for v in views for t in v.tables)
