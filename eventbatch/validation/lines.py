"""The lines of an input file: their types, their decoders, and how values are shown in messages.

`RequestLine` is a line of a file that passed validation (the worker decodes those); the loose
types are what the per-line path decodes any line into, to find and word its problems.
"""

from __future__ import annotations

from typing import Iterator

import msgspec


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


class LooseLine(msgspec.Struct):
    # Every field optional and untyped, so that one decode both checks the JSON and tells
    # which field is missing (UNSET) or of the wrong type; unknown fields are ignored.
    custom_id: object = msgspec.UNSET
    method: object = msgspec.UNSET
    url: object = msgspec.UNSET
    body: msgspec.Raw = msgspec.Raw()     # empty when the field is absent


class LooseBody(msgspec.Struct):
    # Only what the rules look at, the rest skipped by the decoder; a Raw field is empty when
    # absent (the endpoints' required fields are only checked for being there).
    model: object = msgspec.UNSET
    stream: object = None
    messages: msgspec.Raw = msgspec.Raw()
    prompt: msgspec.Raw = msgspec.Raw()
    input: msgspec.Raw = msgspec.Raw()


line_decoder = msgspec.json.Decoder(LooseLine)
body_decoder = msgspec.json.Decoder(LooseBody)
_inputs_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_request_decoder = msgspec.json.Decoder(RequestLine)
_encode = msgspec.json.encode

# ValidationError is a DecodeError; msgspec raises RecursionError on JSON nested too deep.
BAD_JSON = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def decode_request_line(data: bytes) -> RequestLine:
    """Decode one line of a file that passed validation (raises msgspec.DecodeError otherwise)."""
    return _request_decoder.decode(data)


def iter_chunk_lines(data: bytes) -> Iterator[RequestLine]:
    """The requests in the bytes [byte_start, byte_end) of a Chunk, in order; blank lines skipped."""
    decode = _request_decoder.decode
    for line in data.split(b"\n"):
        if line and not line.isspace():
            yield decode(line)


def describe(value: object) -> str:
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


def kind(raw: bytes) -> str:
    """The JSON type of a raw value, from its first byte."""
    first = raw[:1]
    return {b"[": "an array", b"{": "an object", b'"': "a string", b"n": "null",
            b"t": "true", b"f": "false"}.get(first, "a number")


def count_inputs(raw: msgspec.Raw) -> int:
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
