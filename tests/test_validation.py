"""The streaming validator of input files: pure unit tests, no database."""

from __future__ import annotations

import time

import msgspec
import pytest

from eventbatch import validation
from eventbatch.validation import (
    MAX_EMBEDDING_INPUTS, MAX_FILE_BYTES, MAX_REPORTED_ERRORS, MAX_REQUESTS, Chunk, LineError,
    ValidationResult, Validator, decode_request_line, iter_chunk_lines,
)

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
SECRET = "do-not-echo-this-body-text"
OMIT = object()        # leave the field out
DEFAULT = object()


def line(custom_id: object = "req", method: object = "POST", url: object = CHAT, body: object = DEFAULT,
         **extra: object) -> bytes:
    """One input line; a field given as OMIT is left out."""
    if body is DEFAULT:
        body = {"model": "m1", "messages": [{"role": "user", "content": SECRET}]}
    fields = {"custom_id": custom_id, "method": method, "url": url, "body": body, **extra}
    return msgspec.json.encode({k: v for k, v in fields.items() if v is not OMIT})


def validate(data: bytes, endpoint: str = CHAT, piece: int | None = None, **kw: object) -> ValidationResult:
    v = Validator(endpoint, **kw)
    if piece is None:
        v.feed(data)
    else:
        for i in range(0, len(data), piece):
            v.feed(data[i:i + piece])
    return v.finish()


def codes(result: ValidationResult) -> list[tuple[str, str | None, int | None]]:
    return [(e.code, e.param, e.line) for e in result.errors]


# --- valid files ----------------------------------------------------------------------------

def test_valid_file_gives_model_total_and_chunks():
    data = b"\n".join(line(f"r{i}") for i in range(5)) + b"\n"
    result = validate(data, chunk_size=2)
    assert result.errors == [] and result.error_count == 0
    assert result.total == 5 and result.model == "m1"
    sizes = [len(line(f"r{i}")) + 1 for i in range(5)]
    assert result.chunks == [
        Chunk(0, 2, 0, sizes[0] + sizes[1]),
        Chunk(2, 2, sum(sizes[:2]), sum(sizes[:4])),
        Chunk(4, 1, sum(sizes[:4]), sum(sizes)),
    ]


def test_blank_lines_crlf_and_missing_final_newline_are_fine():
    data = b"\r\n" + line("a") + b"\r\n   \n\t\r\n" + line("b") + b"\r\n" + line("c")
    result = validate(data)
    assert result.errors == [] and result.total == 3
    [chunk] = result.chunks
    assert chunk == Chunk(0, 3, 2, len(data))
    assert [r.custom_id for r in iter_chunk_lines(data[chunk.byte_start:chunk.byte_end])] == ["a", "b", "c"]


def test_byte_order_mark_is_skipped():
    data = b"\xef\xbb\xbf" + line("a") + b"\n" + line("b") + b"\n"
    result = validate(data)
    assert result.errors == []
    assert result.chunks[0].byte_start == 3
    c = result.chunks[0]
    assert [r.custom_id for r in iter_chunk_lines(data[c.byte_start:c.byte_end])] == ["a", "b"]


def test_unknown_fields_are_ignored_and_stream_false_is_fine():
    data = line("a", extra_field=[1, {"x": 2}], body={"model": "m1", "stream": False, "n": 3, "tools": []})
    assert validate(data).errors == []


def test_decode_request_line_keeps_the_body_raw():
    req = decode_request_line(line("a", body={"model": "m1", "temperature": 0.5}))
    assert (req.custom_id, req.method, req.url) == ("a", "POST", CHAT)
    assert msgspec.json.decode(req.body) == {"model": "m1", "temperature": 0.5}


# --- every code, all bad lines together -------------------------------------------------------

def test_every_line_code_reported_together_with_line_numbers():
    lines = [
        line("ok-1"),                                                    # 1
        b"",                                                             # 2 blank
        b'{"custom_id": "x", "method": ',                                # 3 invalid_json_line
        b"[1, 2, 3]",                                                    # 4 invalid_json_line (array)
        line(OMIT),                                                     # 5 missing custom_id
        line("r5", method=OMIT),                                        # 6 missing method
        line("r6", url=OMIT),                                           # 7 missing url
        line("r7", body=OMIT),                                           # 8 missing body
        line("r8", body="a string"),                                     # 9 body not an object
        line(42),                                                        # 10 custom_id not a string
        line(""),                                                        # 11 empty custom_id
        line("x" * 513),                                                 # 12 custom_id too long
        line("ok-1"),                                                    # 13 duplicate of line 1
        line("r13", method="GET"),                                       # 14 invalid_method
        line("r14", url=EMBEDDINGS),                                     # 15 mismatched_url
        line("r15", body={"messages": []}),                              # 16 missing_model
        line("r16", body={"model": "other", "messages": []}),           # 17 mismatched_model
        line("r17", body={"model": "m1", "stream": True}),              # 18 streaming_unsupported
        b"   \r",                                                        # 19 blank
        line("ok-20"),                                                   # 20 fine
        line("ok-20", method="GET", url="/nope"),                        # 21 duplicate wins over method
        b'{"custom_id": "\xff\xfe", "method": "POST"}',                  # 22 not UTF-8
        line("r23", method=None),                                        # 23 method null
        line("r24", url=7),                                              # 24 url not a string
        line("r25", body={"model": 5}),                                  # 25 model not a string
        line("r26", body=None),                                          # 26 body null
        b'"just a string"',                                              # 27 not an object
        line("r28", method="GET", body={"stream": True}),                # 28 method before model/stream
    ]
    data = b"\r\n".join(lines) + b"\r\n"
    result = validate(data)
    assert codes(result) == [
        ("invalid_json_line", None, 3),
        ("invalid_json_line", None, 4),
        ("missing_required_parameter", "custom_id", 5),
        ("missing_required_parameter", "method", 6),
        ("missing_required_parameter", "url", 7),
        ("missing_required_parameter", "body", 8),
        ("missing_required_parameter", "body", 9),
        ("invalid_custom_id", "custom_id", 10),
        ("invalid_custom_id", "custom_id", 11),
        ("invalid_custom_id", "custom_id", 12),
        ("duplicate_custom_id", "custom_id", 13),
        ("invalid_method", "method", 14),
        ("mismatched_url", "url", 15),
        ("missing_model", "body.model", 16),
        ("mismatched_model", "body.model", 17),
        ("streaming_unsupported", "body.stream", 18),
        ("duplicate_custom_id", "custom_id", 21),
        ("invalid_json_line", None, 22),
        ("invalid_method", "method", 23),
        ("mismatched_url", "url", 24),
        ("missing_model", "body.model", 25),
        ("missing_required_parameter", "body", 26),
        ("invalid_json_line", None, 27),
        ("invalid_method", "method", 28),
    ]
    assert result.error_count == len(result.errors)
    assert result.total == len(lines) - 2          # two blank lines
    assert result.model == "m1"
    assert result.chunks == []
    by_line = {e.line: e.message for e in result.errors}
    assert "line 1" in by_line[13] and '"ok-1"' in by_line[13]
    assert by_line[14] == 'Line 14: \'method\' must be "POST", got "GET".'
    assert '"/v1/embeddings"' in by_line[15] and f'"{CHAT}"' in by_line[15]
    assert '"other"' in by_line[17] and '"m1"' in by_line[17] and "line 1" in by_line[17]
    assert "object" in by_line[9] and "string" in by_line[9]
    assert "UTF-8" in by_line[22]
    for message in by_line.values():
        assert message.startswith("Line ") and SECRET not in message and "x" * 100 not in message


def test_line_error_serialises_as_openai_batch_error():
    encoded = msgspec.json.encode(LineError("invalid_method", "m", "method", 3))
    assert msgspec.json.decode(encoded) == {"code": "invalid_method", "message": "m", "param": "method", "line": 3}
    assert msgspec.json.decode(msgspec.json.encode(LineError("empty_file", "m"))) == {
        "code": "empty_file", "message": "m", "param": None, "line": None}


def test_the_first_line_naming_a_model_sets_it():
    data = b"\n".join([
        line("a", method="GET", body={"model": "ignored"}),   # bad line: its model does not count
        line("b", body={"model": "m2"}),
        line("c", body={"model": "m2"}),
        line("d", body={"model": "m3"}),
    ])
    result = validate(data)
    assert codes(result) == [("invalid_method", "method", 1), ("mismatched_model", "body.model", 4)]
    assert result.model == "m2" and "line 2" in result.errors[1].message


@pytest.mark.parametrize("data", [b"", b"\n", b"\n  \r\n\t\n", b"   "])
def test_empty_file(data):
    result = validate(data)
    assert codes(result) == [("empty_file", None, None)]
    assert result.error_count == 1 and result.total == 0 and result.chunks == []


def test_errors_are_capped_and_counted():
    data = b"\n".join([b"nope"] * (MAX_REPORTED_ERRORS + 200))
    result = validate(data)
    assert len(result.errors) == MAX_REPORTED_ERRORS
    assert result.error_count == MAX_REPORTED_ERRORS + 200
    assert [e.line for e in result.errors] == list(range(1, MAX_REPORTED_ERRORS + 1))


def test_file_level_errors_come_first_and_survive_the_cap():
    body = {"model": "m1", "input": ["x"] * 10}
    good = [line(f"e{i}", url=EMBEDDINGS, body=body) for i in range(MAX_EMBEDDING_INPUTS // 10 + 1)]
    data = b"\n".join([b"nope"] * (MAX_REPORTED_ERRORS + 5) + good)
    result = validate(data, EMBEDDINGS)
    assert result.errors[0].code == "too_many_embedding_inputs"
    assert len(result.errors) == MAX_REPORTED_ERRORS
    assert result.error_count == MAX_REPORTED_ERRORS + 6
    assert all(e.code == "invalid_json_line" for e in result.errors[1:])


# --- limits -----------------------------------------------------------------------------------

def _small_lines(n: int) -> list[bytes]:
    return [b'{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}' % i
            for i in range(n)]


def test_exactly_max_requests_is_fine():
    result = validate(b"\n".join(_small_lines(MAX_REQUESTS)), piece=1 << 20)
    assert result.errors == [] and result.total == MAX_REQUESTS
    assert sum(c.count for c in result.chunks) == MAX_REQUESTS


def test_too_many_requests():
    lines = _small_lines(MAX_REQUESTS + 1) + [b"not json", b"", b"{}"]
    data = b"\n" + b"\n".join(lines)                 # a blank first line shifts line numbers by one
    result = validate(data, piece=1 << 20)
    # Past the limit lines are counted, not checked: the bad lines after it add no error.
    assert codes(result) == [("too_many_requests", None, MAX_REQUESTS + 2)]
    assert result.error_count == 1
    assert result.total == MAX_REQUESTS + 3
    assert f"{MAX_REQUESTS + 3:,}" in result.errors[0].message
    assert result.chunks == []


def test_embedding_inputs_are_counted():
    lines = [
        line("a", url=EMBEDDINGS, body={"model": "e", "input": "one string"}),           # 1
        line("b", url=EMBEDDINGS, body={"model": "e", "input": ["x", "y", "z"]}),        # 3
        line("c", url=EMBEDDINGS, body={"model": "e", "input": [1, 2, 3, 4]}),           # token ids: 1
        line("d", url=EMBEDDINGS, body={"model": "e", "input": [[1, 2], [3], [4]]}),     # 3
        line("e", url=EMBEDDINGS, body={"model": "e", "input": []}),                     # 0
        line("f", url=EMBEDDINGS, body={"model": "e"}),                                  # 0
    ]
    result = validate(b"\n".join(lines), EMBEDDINGS)
    assert result.errors == [] and result.embedding_inputs == 8 and result.model == "e"
    # Only an embeddings batch counts inputs.
    assert validate(line(body={"model": "m", "input": ["a", "b"]})).embedding_inputs == 0


def test_too_many_embedding_inputs():
    half = MAX_EMBEDDING_INPUTS // 2
    lines = [line(f"r{i}", url=EMBEDDINGS, body={"model": "e", "input": ["tok"] * half}) for i in range(2)]
    assert validate(b"\n".join(lines), EMBEDDINGS).errors == []
    lines.append(line("last", url=EMBEDDINGS, body={"model": "e", "input": "one more"}))
    result = validate(b"\n".join(lines), EMBEDDINGS)
    assert codes(result) == [("too_many_embedding_inputs", "body.input", 3)]
    assert result.embedding_inputs == MAX_EMBEDDING_INPUTS + 1
    assert f"{MAX_EMBEDDING_INPUTS + 1:,}" in result.errors[0].message
    assert result.chunks == []


def test_file_too_large_stops_parsing():
    assert Validator(CHAT).max_bytes == MAX_FILE_BYTES == 200_000_000
    data = b"\n".join(_small_lines(10)) + b"\n"
    assert validate(data, max_bytes=len(data)).errors == []
    v = Validator(CHAT, max_bytes=len(data) - 1)
    v.feed(data[:100])
    v.feed(data[100:])
    v.feed(b"garbage\n" * 100)                   # ignored once the limit is passed
    result = v.finish()
    assert codes(result) == [("file_too_large", None, None)]
    assert result.error_count == 1 and result.chunks == []


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError):
        Validator(CHAT, chunk_size=0)


# --- feeding in pieces --------------------------------------------------------------------------

def _mixed_file() -> tuple[bytes, list[str]]:
    ids, parts = [], [b"\xef\xbb\xbf"]
    for i in range(40):
        cid = f"req-{i}"
        ids.append(cid)
        body = {"model": "m1", "messages": [{"role": "user", "content": "é" * (i * 13 % 97)}]}
        parts.append(line(cid, body=body) + (b"\r\n" if i % 3 else b"\n"))
        if i % 7 == 0:
            parts.append(b"  \n")
    parts.append(line("last"))                     # no final newline
    ids.append("last")
    return b"".join(parts), ids


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_pieces_of_any_size_give_the_same_result(piece):
    data, ids = _mixed_file()
    whole = validate(data, chunk_size=6)
    assert whole.errors == [] and whole.total == len(ids)
    assert validate(data, piece=piece, chunk_size=6) == whole
    assert [c.count for c in whole.chunks] == [6] * 6 + [5]
    assert whole.chunks[-1].byte_end == len(data)
    for c in whole.chunks:
        got = [r.custom_id for r in iter_chunk_lines(data[c.byte_start:c.byte_end])]
        assert got == ids[c.first_index:c.first_index + c.count]


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_pieces_of_any_size_give_the_same_errors(piece):
    data = b"\n".join([line("a"), b"{broken", line("a"), b"", line("b", method="PUT"), line("c", body=[])])
    whole = validate(data)
    assert codes(whole) == [("invalid_json_line", None, 2), ("duplicate_custom_id", "custom_id", 3),
                            ("invalid_method", "method", 5), ("missing_required_parameter", "body", 6)]
    assert validate(data, piece=piece) == whole


# --- speed ----------------------------------------------------------------------------------------

def test_a_hundred_megabyte_file_validates():
    n = MAX_REQUESTS
    filler = "Summarise the following text in one sentence, please. " * 33       # ~1.8 KB
    lines = []
    for i in range(n):
        body = {"model": "gpt-4o-mini", "max_tokens": 64, "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": f"{i}: {filler}"}]}
        lines.append(line(f"request-{i}", body=body))
    data = b"\n".join(lines) + b"\n"
    assert len(data) > 95_000_000
    pieces = [data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    start = time.process_time()
    v = Validator(CHAT)
    for p in pieces:
        v.feed(p)
    result = v.finish()
    cpu = time.process_time() - start
    print(f"\nvalidated {len(data) / 1e6:.1f} MB, {n} lines in {cpu:.3f} s CPU "
          f"({len(data) / 1e6 / cpu:.0f} MB/s)")
    assert result.errors == [] and result.total == n and result.model == "gpt-4o-mini"
    assert sum(c.count for c in result.chunks) == n and result.chunks[-1].byte_end == len(data)
    c = result.chunks[100]
    assert [r.custom_id for r in iter_chunk_lines(data[c.byte_start:c.byte_end])] == [
        f"request-{i}" for i in range(c.first_index, c.first_index + c.count)]


def test_module_constants():
    assert (validation.MAX_FILE_BYTES, validation.MAX_REQUESTS, validation.MAX_EMBEDDING_INPUTS,
            validation.MAX_REPORTED_ERRORS) == (200_000_000, 50_000, 50_000, 1000)
