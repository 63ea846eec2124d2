"""The streaming validator of batch input files (SPEC section 4).

    lines.py      the line types and their decoders (`decode_request_line`, `iter_chunk_lines`)
    rules.py      the limits, each endpoint's rules, and the error of every code, worded
    validator.py  `Validator` (feed pieces, finish) and its `ValidationResult`; the per-line path
    fast_path.py  the Validator's fast path: runs of lines proven fine in one msgspec decode
"""

from .lines import LineError, RequestLine, decode_request_line, iter_chunk_lines
from .rules import (
    EMBEDDINGS_ENDPOINT, MAX_CUSTOM_ID_CHARS, MAX_EMBEDDING_INPUTS, MAX_FILE_BYTES, MAX_REPORTED_ERRORS,
    MAX_REQUESTS,
)
from .validator import Chunk, ValidationResult, Validator

__all__ = [
    "EMBEDDINGS_ENDPOINT", "MAX_CUSTOM_ID_CHARS", "MAX_EMBEDDING_INPUTS", "MAX_FILE_BYTES",
    "MAX_REPORTED_ERRORS", "MAX_REQUESTS", "Chunk", "LineError", "RequestLine", "ValidationResult",
    "Validator", "decode_request_line", "iter_chunk_lines",
]
