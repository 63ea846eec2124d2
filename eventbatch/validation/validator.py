"""The streaming validator of batch input files (SPEC section 4): `Validator`, its result.

The file arrives as byte pieces of any size. The complete lines of a piece are checked together
first, by the fast path (fast_path.py), which only proves lines fine; a run of lines it cannot
prove fine goes through the per-line path here (`Validator._line`), which finds and words every
problem (the words are in rules.py), so the outcome is the per-line path's in every respect.
Memory stays bounded: the partial last line of a piece, the custom_ids seen, and the chunk plan
are all that is kept.

Rules, one error per bad line, the most fundamental problem of the line winning, in this order:
JSON (and UTF-8) → required fields (`custom_id`, `method`, `url`, `body`; the first one missing
is named) → `custom_id` (type, length, duplicate) → `method` → `url` → `body.model` → the
endpoint's required body field (`messages`, `prompt` or `input`) → `body.stream`. A custom_id
counts as used from the first line that carries it as a valid string, even if that line fails a
later check. The batch's model is set by the first line that gets as far as the model check.
Blank lines (only whitespace) are neither requests nor errors. Line numbers are 1-based
physical line numbers; `\\n` and `\\r\\n` endings both work; a UTF-8 byte order mark at the
start of the file is skipped.
"""

from __future__ import annotations

from typing import Callable, Sequence

import msgspec

from . import rules
from .fast_path import FastPath
from .lines import BAD_JSON, LineError, body_decoder, count_inputs, line_decoder
from .rules import EMBEDDINGS_ENDPOINT, MAX_CUSTOM_ID_CHARS, MAX_EMBEDDING_INPUTS, MAX_FILE_BYTES, \
    MAX_REPORTED_ERRORS, MAX_REQUESTS, REQUIRED_BODY_FIELD

_BOM = b"\xef\xbb\xbf"


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


class Validator(FastPath):
    """Feed the file's bytes in pieces of any size, then call finish().

    Bounded work: once more than `max_bytes` have been fed, the rest is ignored; past
    MAX_REQUESTS request lines, lines are only counted, not checked. `serves_model` says whether
    some configured provider serves a model (None: every model is served); the file's model is
    asked about once, in finish().
    """

    def __init__(self, endpoint: str, chunk_size: int = 256, max_bytes: int = MAX_FILE_BYTES, *,
                 serves_model: Callable[[str], bool] | None = None):
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.endpoint = endpoint
        self.chunk_size = chunk_size
        self.max_bytes = max_bytes
        self.serves_model = serves_model
        self._embeddings = endpoint == EMBEDDINGS_ENDPOINT
        self._required = REQUIRED_BODY_FIELD.get(endpoint)     # the body field every line needs
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
            req = line_decoder.decode(text)
        except BAD_JSON as exc:
            if not text or text.isspace():
                return
            req = None
            bad = exc

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
            self._error(rules.invalid_json(n, text, bad))
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
            self._error(rules.missing_field(n, missing))
            return
        try:
            body = body_decoder.decode(raw_body)
        except msgspec.ValidationError:
            self._error(rules.body_not_an_object(n, bytes(raw_body)))
            return
        if self._embeddings:
            self._count_embedding_inputs(body.input, n)

        if type(custom_id) is not str:
            self._error(rules.custom_id_not_a_string(n, custom_id))
        elif not custom_id:
            self._error(rules.custom_id_empty(n))
        elif len(custom_id) > MAX_CUSTOM_ID_CHARS:
            self._error(rules.custom_id_too_long(n, custom_id))
        elif first_use != n:
            self._error(rules.duplicate_custom_id(n, custom_id, first_use))
        elif method != "POST":
            self._error(rules.invalid_method(n, method))
        elif url != self.endpoint:
            self._error(rules.mismatched_url(n, url, self.endpoint))
        elif type(model := body.model) is not str or not model:
            self._error(rules.missing_model(n, model, model is msgspec.UNSET))
        elif self._model is not None and model != self._model:
            self._error(rules.mismatched_model(n, model, self._model, self._model_line))
        else:
            if self._model is None:
                self._model, self._model_line = model, n
            required = self._required
            if required is not None and not getattr(body, required):
                self._error(rules.missing_body_field(n, required, self.endpoint))
            elif body.stream is True:
                self._error(rules.streaming_unsupported(n, self.endpoint))

    def _run_line(self, custom_id: str) -> int:
        """The line of the fast-path run that used `custom_id`."""
        lines = self._run_lines
        for ids, numbers in self._id_runs:
            lines.update(zip(ids, numbers))
        self._id_runs.clear()
        return lines[custom_id]

    def _count_embedding_inputs(self, raw: msgspec.Raw, n: int) -> None:
        self._inputs += count_inputs(raw)
        if self._inputs > MAX_EMBEDDING_INPUTS and self._inputs_line is None:
            self._inputs_line = n

    def _error(self, error: LineError) -> None:
        self._error_count += 1
        if len(self._errors) < MAX_REPORTED_ERRORS:
            self._errors.append(error)

    def _close_chunk(self) -> None:
        self._chunks.append(Chunk(self._chunk_first, self._chunk_count, self._chunk_start, self._chunk_end))
        self._chunk_count = 0

    # --- outcome ----------------------------------------------------------------------------

    def finish(self) -> ValidationResult:
        """The outcome, once every piece has been fed.

        `errors` starts with the file-level errors (file_too_large, empty_file,
        too_many_requests, too_many_embedding_inputs, model_not_found on the line that set the
        file's model), which are never left out, followed by
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
            file_errors.append(rules.file_too_large(self.max_bytes))
        elif self._total == 0:
            file_errors.append(rules.empty_file())
        if self._over_line is not None:
            file_errors.append(rules.too_many_requests(self._total, self._over_line))
        if self._inputs_line is not None:
            file_errors.append(rules.too_many_embedding_inputs(self._inputs, self._inputs_line))
        if self._model is not None and self.serves_model is not None and not self.serves_model(self._model):
            file_errors.append(rules.model_not_found(self._model_line, self._model))

        error_count = len(file_errors) + self._error_count
        errors = file_errors + self._errors[:MAX_REPORTED_ERRORS - len(file_errors)]
        return ValidationResult(
            total=self._total, model=self._model, errors=errors, error_count=error_count,
            chunks=[] if error_count else self._chunks, embedding_inputs=self._inputs)
