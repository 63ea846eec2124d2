"""The streaming validator of batch input files (SPEC section 4).

The file arrives as byte pieces of any size. The complete lines of a piece are checked together
first (the fast path): one msgspec call decodes all of them into Structs whose types already
encode the per-line rules (custom_id a string of 1-512 characters, method "POST", url the
endpoint, body an object with a non-empty string model and no `stream: true`), a UTF-8
decode of the region (in a few blocks) checks the bytes msgspec skips, and a few C-level set
operations check the cross-line rules (duplicate custom_id, one model). The rest of each body
is skipped, never built into Python objects. Only when something in a run of lines fails does
that run go through the per-line path (`Validator._line`), which finds and words every
problem; so the fast path decides nothing on its own, it only proves that lines are fine, and
the outcome is the per-line path's in every respect. Memory stays bounded: the partial last
line of a piece, the custom_ids seen, and the chunk plan are all that is kept.

Rules, one error per bad line, the most fundamental problem of the line winning, in this order:
JSON (and UTF-8) → required fields (`custom_id`, `method`, `url`, `body`; the first one missing
is named) → `custom_id` (type, length, duplicate) → `method` → `url` → `body.model` →
`body.stream`. A custom_id counts as used from the first line that carries it as a valid
string, even if that line fails a later check. The batch's model is set by the first line that
gets as far as the model check. Blank lines (only whitespace) are neither requests nor errors.
Line numbers are 1-based physical line numbers; `\\n` and `\\r\\n` endings both work; a UTF-8
byte order mark at the start of the file is skipped.
"""

from __future__ import annotations

from bisect import bisect_left
from operator import attrgetter
from typing import Annotated, Iterator, Literal, Sequence

import msgspec

MAX_FILE_BYTES = 200 * 1000 * 1000      # "200 MB"
MAX_REQUESTS = 50_000
MAX_EMBEDDING_INPUTS = 50_000
MAX_REPORTED_ERRORS = 1000
MAX_CUSTOM_ID_CHARS = 512

EMBEDDINGS_ENDPOINT = "/v1/embeddings"

_BOM = b"\xef\xbb\xbf"


class LineError(msgspec.Struct, frozen=True):
    """One problem found in the file; serialises exactly as OpenAI's BatchError."""
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class RequestLine(msgspec.Struct, frozen=True):
    """One input line of a valid file, the body kept as the raw bytes the user sent."""
    custom_id: str
    method: str
    url: str
    body: msgspec.Raw


class Chunk(msgspec.Struct, frozen=True):
    """A run of consecutive requests: bytes [byte_start, byte_end) of the file hold exactly
    `count` request lines (blank lines may sit between them), the first with `first_index`."""
    first_index: int
    count: int
    byte_start: int
    byte_end: int


class ValidationResult(msgspec.Struct):
    total: int                   # number of request lines (non-blank lines)
    model: str | None            # the single model of the file, when there is one
    errors: list[LineError]      # at most MAX_REPORTED_ERRORS; see Validator.finish
    error_count: int             # how many errors in all (may exceed len(errors))
    chunks: list[Chunk]          # the work plan; empty whenever there are errors
    embedding_inputs: int


class _LooseLine(msgspec.Struct):
    # Every field optional and untyped, so that one decode both checks the JSON and tells
    # which field is missing (UNSET) or of the wrong type; unknown fields are ignored.
    custom_id: object = msgspec.UNSET
    method: object = msgspec.UNSET
    url: object = msgspec.UNSET
    body: msgspec.Raw = msgspec.Raw()     # empty when the field is absent


class _Body(msgspec.Struct):
    # Only what the rules look at; `messages`, `prompt`… are skipped by the decoder.
    model: object = msgspec.UNSET
    stream: object = None
    input: msgspec.Raw = msgspec.Raw()


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
        body_type = msgspec.defstruct("_FastBody", [
            ("model", _ANY_MODEL if model is None else Literal[model]),
            ("stream", _STREAM_TYPE, None),
            ("input", msgspec.Raw, msgspec.Raw()),
        ], gc=False)
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

_line_decoder = msgspec.json.Decoder(_LooseLine)
_body_decoder = msgspec.json.Decoder(_Body)
_inputs_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_request_decoder = msgspec.json.Decoder(RequestLine)
_encode = msgspec.json.encode

# ValidationError is a DecodeError; msgspec raises RecursionError on JSON nested too deep.
_BAD_JSON = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def decode_request_line(data: bytes) -> RequestLine:
    """Decode one line of a file that passed validation (raises msgspec.DecodeError otherwise)."""
    return _request_decoder.decode(data)


def iter_chunk_lines(data: bytes) -> Iterator[RequestLine]:
    """The requests in the bytes [byte_start, byte_end) of a Chunk, in order; blank lines skipped."""
    decode = _request_decoder.decode
    for line in data.split(b"\n"):
        if line and not line.isspace():
            yield decode(line)


def _describe(value: object) -> str:
    """A short rendering of a JSON value for a message: never a whole object or a long string."""
    if isinstance(value, str):
        return _encode(value if len(value) <= 64 else value[:64] + "…").decode()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _kind(raw: bytes) -> str:
    """The JSON type of a raw value, from its first byte."""
    first = raw[:1]
    return {b"[": "an array", b"{": "an object", b'"': "a string", b"n": "null",
            b"t": "true", b"f": "false"}.get(first, "a number")


def _count_inputs(raw: msgspec.Raw) -> int:
    """Embedding inputs in `body.input`: a string is one, a list of token ids is one, a list of
    strings or of token lists counts its length. Anything else counts one (upstream rejects it)."""
    if not raw:
        return 0
    if memoryview(raw)[0] != 0x5B:      # "["
        return 1
    items = _inputs_decoder.decode(raw)
    if items and memoryview(items[0])[0] in b"-0123456789":
        return 1
    return len(items)


class Validator:
    """Feed the file's bytes in pieces of any size, then call finish().

    Bounded work: once more than `max_bytes` have been fed, the rest is ignored; past
    MAX_REQUESTS request lines, lines are only counted, not checked.
    """

    def __init__(self, endpoint: str, chunk_size: int = 256, max_bytes: int = MAX_FILE_BYTES):
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.endpoint = endpoint
        self.chunk_size = chunk_size
        self.max_bytes = max_bytes
        self._embeddings = endpoint == EMBEDDINGS_ENDPOINT
        self._pending = bytearray()     # the partial line at the end of the last piece
        self._fed = 0
        self._offset = 0                # file offset of the first byte of the next line
        self._line_no = 0
        self._total = 0
        self._too_large = False
        self._over_line: int | None = None     # the first line past MAX_REQUESTS
        self._inputs = 0
        self._inputs_line: int | None = None   # the line on which the inputs passed the limit
        # The custom_ids used so far, all in _ids. The line that used each first: in _id_lines
        # for lines the per-line path saw; for runs the fast path recorded (a set is cheaper to
        # grow than a dict), (ids, line numbers) pairs kept aside until a duplicate needs one.
        self._ids: set[str] = set()
        self._id_lines: dict[str, int] = {}
        self._id_runs: list[tuple[list[str], Sequence[int]]] = []
        self._run_lines: dict[str, int] = {}
        self._model: str | None = None
        self._model_line = 0
        self._errors: list[LineError] = []
        self._error_count = 0
        self._chunks: list[Chunk] = []
        self._chunk_count = 0
        self._chunk_first = 0
        self._chunk_start = 0
        self._chunk_end = 0
        self._slow_pieces = 0           # pieces to take line by line before trying the fast path again
        self._slow_backoff = 1

    # --- input ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._too_large:
            return
        self._fed += len(data)
        if self._fed > self.max_bytes:
            self._too_large = True
            self._pending = bytearray()
            return
        if type(data) is not bytes:
            data = bytes(data)
        last = data.rfind(b"\n")
        if last < 0:                    # no line ends in this piece: it all waits
            self._pending += data
            return
        start = 0
        if self._pending or not self._line_no:
            # The line completed by this piece, and the file's first line (it may start with a
            # byte order mark), go through the per-line path on their own.
            nl = data.find(b"\n")
            if self._pending:
                self._pending += memoryview(data)[:nl]
                line = bytes(self._pending)
                self._pending = bytearray()
            else:
                line = data[:nl]
            self._line(line, len(line) + 1)
            start = nl + 1
        if start <= last:
            # The lines the fast path leaves to the per-line path come back here, so that _line
            # runs at one stack depth for every line (as for the first one, and in finish()):
            # how deeply JSON may nest before msgspec gives up (RecursionError) depends on it.
            # The fast path decodes from deeper down, so it gives up no later than _line would,
            # and then leaves the line to it.
            line = self._line
            if self._slow_pieces:
                # The fast path has been failing on most lines lately: don't pay for trying it.
                self._slow_pieces -= 1
                for text in data[start:last].split(b"\n"):
                    line(text, len(text) + 1)
            else:
                for text, size in self._lines(data, start, last + 1):
                    line(text, size)
        self._pending += memoryview(data)[last + 1:]

    # --- many lines at once -------------------------------------------------------------------

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

    def _line(self, text: bytes, size: int) -> None:
        """One physical line without its newline; `size` is the bytes it took in the file."""
        start = self._offset
        self._offset = end = start + size
        self._line_no += 1
        n = self._line_no
        if self._over_line is not None:       # past the request limit: only count
            if text and not text.isspace():
                self._total += 1
            return
        if n == 1 and text.startswith(_BOM):
            text = text[3:]
            start += 3
        try:
            if not text.isascii():
                text.decode()       # JSON is UTF-8; msgspec checks only the strings it builds
            req = _line_decoder.decode(text)
        except msgspec.ValidationError:
            req = None
            problem = f"Line {n}: the line is {_kind(text.lstrip())}, not a JSON object."
        except _BAD_JSON as exc:
            if not text or text.isspace():
                return
            req = None
            if isinstance(exc, UnicodeDecodeError):
                problem = f"Line {n}: the line is not valid UTF-8."
            elif str(exc) == "Input data was truncated":
                problem = f"Line {n}: the line ends before its JSON is complete."
            else:
                problem = f"Line {n}: the line is not valid JSON ({exc})."

        index = self._total
        self._total = index + 1
        if index >= MAX_REQUESTS:
            self._over_line = n
            return
        # The work plan, kept for every request line; it is only used when there are no errors.
        if self._chunk_count == 0:
            self._chunk_first = index
            self._chunk_start = start
        self._chunk_count += 1
        self._chunk_end = end
        if self._chunk_count == self.chunk_size:
            self._close_chunk()

        if req is None:
            self._error("invalid_json_line", problem + " Each line must be one JSON object with "
                        "custom_id, method, url and body.", None, n)
            return

        custom_id = req.custom_id
        first_use = n
        if type(custom_id) is str and custom_id and len(custom_id) <= MAX_CUSTOM_ID_CHARS:
            first_use = self._id_lines.setdefault(custom_id, n)
            if first_use == n:
                if custom_id in self._ids:      # used on a line of a fast-path run
                    first_use = self._id_lines[custom_id] = self._run_line(custom_id)
                else:
                    self._ids.add(custom_id)
        method, url, raw_body = req.method, req.url, req.body
        missing = ("custom_id" if custom_id is msgspec.UNSET else "method" if method is msgspec.UNSET
                   else "url" if url is msgspec.UNSET else "body" if not raw_body else None)
        if missing:
            self._error("missing_required_parameter",
                        f"Line {n}: the required field '{missing}' is missing; each line needs "
                        "custom_id, method, url and body.", missing, n)
            return
        try:
            body = _body_decoder.decode(raw_body)
        except msgspec.ValidationError:
            self._error("missing_required_parameter",
                        f"Line {n}: 'body' must be a JSON object holding the request, "
                        f"got {_kind(bytes(raw_body))}.", "body", n)
            return
        if self._embeddings:
            self._count_embedding_inputs(body.input, n)

        if type(custom_id) is not str:
            self._error("invalid_custom_id",
                        f"Line {n}: 'custom_id' must be a string, got {_describe(custom_id)}.", "custom_id", n)
            return
        if not custom_id:
            self._error("invalid_custom_id", f"Line {n}: 'custom_id' must not be empty.", "custom_id", n)
            return
        if len(custom_id) > MAX_CUSTOM_ID_CHARS:
            self._error("invalid_custom_id",
                        f"Line {n}: 'custom_id' has {len(custom_id)} characters; "
                        f"at most {MAX_CUSTOM_ID_CHARS} are allowed.", "custom_id", n)
            return
        if first_use != n:
            self._error("duplicate_custom_id",
                        f"Line {n}: custom_id {_describe(custom_id)} is already used on line {first_use}; "
                        "each request needs its own custom_id.", "custom_id", n)
            return
        if method != "POST":
            self._error("invalid_method",
                        f"Line {n}: 'method' must be \"POST\", got {_describe(method)}.", "method", n)
            return
        if url != self.endpoint:
            self._error("mismatched_url",
                        f"Line {n}: 'url' is {_describe(url)} but the batch's endpoint is "
                        f"{_describe(self.endpoint)}; every line must use the batch's endpoint.", "url", n)
            return
        model = body.model
        if type(model) is not str or not model:
            got = "missing" if model is msgspec.UNSET else f"{_describe(model)}, not a model name"
            self._error("missing_model",
                        f"Line {n}: 'body.model' is {got}; every request must name its model.", "body.model", n)
            return
        if self._model is None:
            self._model, self._model_line = model, n
        elif model != self._model:
            self._error("mismatched_model",
                        f"Line {n}: 'body.model' is {_describe(model)} but line {self._model_line} uses "
                        f"{_describe(self._model)}; all requests of a batch must use the same model.",
                        "body.model", n)
            return
        if body.stream is True:
            self._error("streaming_unsupported",
                        f"Line {n}: 'body.stream' is true, but a batch cannot stream; "
                        "remove it or set it to false.", "body.stream", n)

    def _run_line(self, custom_id: str) -> int:
        """The line of the fast-path run that used `custom_id`."""
        lines = self._run_lines
        for ids, numbers in self._id_runs:
            lines.update(zip(ids, numbers))
        self._id_runs.clear()
        return lines[custom_id]

    def _count_embedding_inputs(self, raw: msgspec.Raw, n: int) -> None:
        self._inputs += _count_inputs(raw)
        if self._inputs > MAX_EMBEDDING_INPUTS and self._inputs_line is None:
            self._inputs_line = n

    def _error(self, code: str, message: str, param: str | None, n: int) -> None:
        self._error_count += 1
        if len(self._errors) < MAX_REPORTED_ERRORS:
            self._errors.append(LineError(code, message, param, n))

    def _close_chunk(self) -> None:
        self._chunks.append(Chunk(self._chunk_first, self._chunk_count, self._chunk_start, self._chunk_end))
        self._chunk_count = 0

    # --- outcome ----------------------------------------------------------------------------

    def finish(self) -> ValidationResult:
        """The outcome, once every piece has been fed.

        `errors` starts with the file-level errors (file_too_large, empty_file,
        too_many_requests, too_many_embedding_inputs), which are never left out, followed by
        the line errors in line order, MAX_REPORTED_ERRORS entries at most in all.
        `error_count` is the real total: when it exceeds len(errors), the caller adds the note
        that the list was cut. `chunks` is empty whenever there is an error.
        """
        if self._pending and not self._too_large:
            line = bytes(self._pending)
            self._pending = bytearray()
            self._line(line, len(line))
        if self._chunk_count:
            self._close_chunk()

        file_errors: list[LineError] = []
        if self._too_large:
            file_errors.append(LineError(
                "file_too_large",
                f"The file is larger than {self.max_bytes / 1e6:g} MB ({self.max_bytes:,} bytes), the most "
                "a batch input file may hold; split it into several files.", None, None))
        elif self._total == 0:
            file_errors.append(LineError(
                "empty_file", "The file has no requests; it must hold one JSON request object per line.",
                None, None))
        if self._over_line is not None:
            file_errors.append(LineError(
                "too_many_requests",
                f"The file has {self._total:,} requests; a batch may have at most {MAX_REQUESTS:,} "
                f"(line {self._over_line} is the first over the limit). Split it into several batches.",
                None, self._over_line))
        if self._inputs_line is not None:
            file_errors.append(LineError(
                "too_many_embedding_inputs",
                f"The file has {self._inputs:,} embedding inputs; an embeddings batch may have at most "
                f"{MAX_EMBEDDING_INPUTS:,} (passed on line {self._inputs_line}). "
                "Split it into several batches.", "body.input", self._inputs_line))

        error_count = len(file_errors) + self._error_count
        errors = file_errors + self._errors[:MAX_REPORTED_ERRORS - len(file_errors)]
        return ValidationResult(
            total=self._total, model=self._model, errors=errors, error_count=error_count,
            chunks=[] if error_count else self._chunks, embedding_inputs=self._inputs)
