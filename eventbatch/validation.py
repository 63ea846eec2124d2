"""The streaming validator of batch input files (SPEC section 4).

The file arrives as byte pieces of any size. Each line is decoded once by msgspec into a loose
Struct that keeps `body` raw, and the raw body once more into a Struct of the few fields the
rules need (`model`, `stream`, `input`); the rest of the body is skipped, never built into
Python objects. Memory stays bounded: the partial last line of a piece, the custom_ids seen,
and the chunk plan are all that is kept.

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

from typing import Iterator

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
        self._ids: dict[str, int] = {}         # custom_id → the line that used it first
        self._model: str | None = None
        self._model_line = 0
        self._errors: list[LineError] = []
        self._error_count = 0
        self._chunks: list[Chunk] = []
        self._chunk_count = 0
        self._chunk_first = 0
        self._chunk_start = 0
        self._chunk_end = 0

    # --- input ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._too_large:
            return
        self._fed += len(data)
        if self._fed > self.max_bytes:
            self._too_large = True
            self._pending = bytearray()
            return
        # Split at C speed; the last piece has no newline yet and waits for the next feed.
        lines = bytes(data).split(b"\n")
        tail = lines.pop()
        if lines:
            first = 0
            if self._pending:
                self._pending += lines[0]
                line = bytes(self._pending)
                self._pending = bytearray()
                self._line(line, len(line) + 1)
                first = 1
            line_fn = self._line
            for line in lines[first:] if first else lines:
                line_fn(line, len(line) + 1)
        self._pending += tail

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
            first_use = self._ids.setdefault(custom_id, n)
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
