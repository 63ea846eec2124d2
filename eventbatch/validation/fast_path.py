"""The fast path of the Validator: the complete lines of a piece checked together.

One msgspec call decodes a run of lines into Structs whose types already encode the per-line
rules (custom_id a string of 1-512 characters, method "POST", url the endpoint, body an object
with a non-empty string model, the endpoint's required field and no `stream: true`), a UTF-8 decode of the region (in a few
blocks) checks the bytes msgspec skips, and a few C-level set operations check the cross-line
rules (duplicate custom_id, one model). The rest of each body is skipped, never built into
Python objects. The fast path decides nothing on its own: it only proves that lines are fine,
and hands every run it cannot prove fine to the per-line path (`Validator._line`), so the
outcome is the per-line path's in every respect.
"""

from __future__ import annotations

from bisect import bisect_left
from operator import attrgetter
from typing import Annotated, Iterator, Literal, Sequence

import msgspec

from .rules import EMBEDDINGS_ENDPOINT, MAX_CUSTOM_ID_CHARS, MAX_REQUESTS, REQUIRED_BODY_FIELD


# --- the fast path's types: a line decodes into these only if it passes every per-line rule ---

def _stream_type() -> tuple[object, bool]:
    """`body.stream` may be anything but `true`. Literal[False, None] says so inside msgspec where
    the installed version supports bool literals; otherwise `bool | None` and a check in Python
    (a stream of another type, e.g. "yes", is not an error, but it sends the line down the
    per-line path, which finds it fine). Returns the type and whether it alone rules out true."""
    try:
        decoder = msgspec.json.Decoder(Literal[False, None])
        if decoder.decode(b"false") is False and decoder.decode(b"null") is None:
            try:
                decoder.decode(b"true")
            except msgspec.ValidationError:
                return Literal[False, None], True
    except (TypeError, msgspec.DecodeError):
        pass
    return bool | None, False


_STREAM_TYPE, _STREAM_CHECKED_BY_TYPE = _stream_type()


_ANY_MODEL = Annotated[str, msgspec.Meta(min_length=1)]
_fast_decoders: dict[tuple[str, str | None], msgspec.json.Decoder] = {}


def _fast_decoder(endpoint: str, model: str | None) -> msgspec.json.Decoder:
    """The decoder of a valid line of a batch for `endpoint` (url exactly it) whose model is
    `model` (None: not known yet, any non-empty string). Cached; a handful exist at a time."""
    decoder = _fast_decoders.get((endpoint, model))
    if decoder is None:
        fields: list = [("model", _ANY_MODEL if model is None else Literal[model])]
        required = REQUIRED_BODY_FIELD.get(endpoint)
        if required is not None:
            fields.append((required, msgspec.Raw))          # no default: the line must have it
        fields.append(("stream", _STREAM_TYPE, None))
        if endpoint == EMBEDDINGS_ENDPOINT and required != "input":
            fields.append(("input", msgspec.Raw, msgspec.Raw()))     # counted: see _get_input
        body_type = msgspec.defstruct("_FastBody", fields, gc=False)
        line_type = msgspec.defstruct("_FastLine", [
            ("custom_id", Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CUSTOM_ID_CHARS)]),
            ("method", Literal["POST"]),
            ("url", Literal[endpoint]),
            ("body", body_type),
        ], gc=False)
        if len(_fast_decoders) >= 64:
            _fast_decoders.clear()
        decoder = _fast_decoders[(endpoint, model)] = msgspec.json.Decoder(line_type)
    return decoder


_get_custom_id = attrgetter("custom_id")
_get_model = attrgetter("body.model")
_get_stream = attrgetter("body.stream")
_get_input = attrgetter("body.input")

_FAST_RETRY_LINES = 32          # after a run of lines fails the fast path, retry it in runs this long
_UTF8_BLOCK = 128 * 1024        # decode for the UTF-8 check in blocks about this big (cache-friendly)


class FastPath:
    """The fast path's half of the Validator (validator.py), which holds the state both halves
    share and the per-line path; kept apart only so that each half reads on its own."""

    endpoint: str
    chunk_size: int
    _embeddings: bool
    _offset: int
    _line_no: int
    _total: int
    _over_line: int | None
    _ids: set[str]
    _id_runs: list[tuple[list[str], Sequence[int]]]
    _model: str | None
    _model_line: int
    _chunk_count: int
    _chunk_first: int
    _chunk_start: int
    _chunk_end: int
    _slow_pieces: int
    _slow_backoff: int

    def _count_embedding_inputs(self, raw: msgspec.Raw, n: int) -> None:
        raise NotImplementedError

    def _close_chunk(self) -> None:
        raise NotImplementedError

    def _lines(self, data: bytes, start: int, stop: int) -> Iterator[tuple[bytes, int]]:
        """The complete lines data[start:stop] (it ends with a newline); self._offset is the file
        offset of data[start]. Runs of lines go through the fast path; the lines of a run it
        rejects are yielded, in order, for the caller to put through the per-line path (before
        the next run is looked at), which gives exactly the outcome the fast path would have had
        for good lines and finds the problems of bad ones."""
        # One pass over the newlines (memchr): where each line ends, which lines are blank, and
        # which are neither blank nor shaped `{...}` (optionally with a `\r` before the newline).
        find = data.find
        ends: list[int] = []
        append = ends.append
        blank: list[int] = []
        odd: list[int] = []
        s = start
        while s < stop:
            nl = find(b"\n", s, stop)
            if data[s] != 123 or (data[nl - 1] != 125 and (data[nl - 1] != 13 or data[nl - 2] != 125)):
                if s == nl or data[s:nl].isspace():
                    blank.append(len(ends))
                else:
                    odd.append(len(ends))
                    if len(odd) >= 64 and 2 * len(odd) > len(ends):
                        # Mostly lines that are not even shaped like objects: all per line.
                        self._slow_down(True)
                        for text in data[start:stop - 1].split(b"\n"):
                            yield text, len(text) + 1
                        return
            append(nl)
            s = nl + 1
        n = len(ends)
        ascii = data.isascii()
        if not odd and self._fast(data, start, ends, 0, n, blank, ascii):
            return
        # Something failed: retry in short runs, so that one bad line costs only its own run the
        # per-line path. A run holding a line not even shaped like an object goes per line.
        failed = 0
        for i in range(0, n, _FAST_RETRY_LINES):
            j = min(i + _FAST_RETRY_LINES, n)
            if bisect_left(odd, j) == bisect_left(odd, i) and \
                    self._fast(data, start, ends, i, j, blank[bisect_left(blank, i):bisect_left(blank, j)], ascii):
                continue
            failed += j - i
            for k in range(i, j):
                s = ends[k - 1] + 1 if k else start
                yield data[s:ends[k]], ends[k] + 1 - s
        self._slow_down(failed * 2 > n)

    def _slow_down(self, mostly_failed: bool) -> None:
        """After a piece whose lines mostly failed the fast path (bad or oddly written lines),
        take the next pieces line by line, for longer each time this happens again in a row;
        then try the fast path again."""
        if mostly_failed:
            self._slow_pieces = self._slow_backoff
            self._slow_backoff = min(2 * self._slow_backoff, 64)
        else:
            self._slow_backoff = 1

    def _fast(self, data: bytes, start: int, ends: list[int], i: int, j: int, blank: list[int],
              ascii: bool) -> bool:
        """Lines i..j-1 of data[start:] (line k ends with the newline at ends[k]), `blank` the
        blank ones among them, `ascii` whether all of data is ASCII. If they are all valid
        requests, and none is an error given the lines before, record them exactly as the
        per-line path would and return True; otherwise change nothing and return False."""
        s = ends[i - 1] + 1 if i else start
        e = ends[j - 1] + 1
        count = j - i - len(blank)          # request lines
        if self._over_line is not None or count == 0:
            self._total += count            # past the request limit lines are only counted
            self._line_no += j - i
            self._offset += e - s
            return True
        total = self._total
        if total + count > MAX_REQUESTS:
            return False
        model = self._model
        view = memoryview(data)[s:e]
        try:
            # JSON, types and the per-line rules, all lines in one call. Each line starts with
            # `{` and ends with `}` (blank lines aside): a newline between `}` and `{` can only
            # separate two top-level values, so each line holds whole values, and as many values
            # as lines means one a line, the very value the line decodes to on its own.
            reqs = _fast_decoder(self.endpoint, model).decode_lines(view)
            if len(reqs) != count:
                return False
            # UTF-8: msgspec checks only the strings it builds. No character spans a newline,
            # so blocks cut after newlines are all valid exactly when every line is.
            if not ascii:
                find = data.find
                a = s
                while a < e:
                    z = find(b"\n", a + _UTF8_BLOCK, e)
                    z = e if z < 0 else z + 1
                    str(view[a - s:z - s], "utf-8")
                    a = z
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError):
            return False
        if not _STREAM_CHECKED_BY_TYPE and any(map(_get_stream, reqs)):
            return False
        if model is None and len(set(map(_get_model, reqs))) != 1:
            return False                    # (once the model is known, the decoder checks it)
        # custom_ids: none used before, none twice among these.
        ids = list(map(_get_custom_id, reqs))
        seen = self._ids
        if not seen.isdisjoint(ids):
            return False
        before = len(seen)
        seen.update(ids)
        if len(seen) != before + count:
            seen.difference_update(ids)     # none of them was there before
            return False

        # All good: record them as the per-line path would have, line by line.
        if blank:
            skip = set(blank)
            rows: Sequence[int] = [k for k in range(i, j) if k not in skip]     # the request lines
        else:
            rows = range(i, j)
        first = self._line_no + 1 - i      # line number of line k is first + k
        numbers = range(first + i, first + j) if not blank else [first + k for k in rows]
        self._id_runs.append((ids, numbers))
        if model is None:
            self._model, self._model_line = reqs[0].body.model, numbers[0]
        if self._embeddings:
            for raw, n in zip(map(_get_input, reqs), numbers):
                self._count_embedding_inputs(raw, n)
        # The work plan. Line k spans data[ends[k - 1] + 1:ends[k] + 1]; base maps data to file.
        base = self._offset - s
        size = self.chunk_size
        r = 0
        while r < count:
            if self._chunk_count == 0:
                k = rows[r]
                self._chunk_first = total + r
                self._chunk_start = base + (ends[k - 1] + 1 if k else start)
            take = min(size - self._chunk_count, count - r)
            r += take
            self._chunk_count += take
            self._chunk_end = base + ends[rows[r - 1]] + 1
            if self._chunk_count == size:
                self._close_chunk()
        self._total = total + count
        self._line_no += j - i
        self._offset += e - s
        return True

