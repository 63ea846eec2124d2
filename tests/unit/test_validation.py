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
    data = line("a", extra_field=[1, {"x": 2}], body={"model": "m1", "messages": [], "stream": False, "n": 3, "tools": []})
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
        line("r17", body={"model": "m1", "messages": [], "stream": True}),  # 18 streaming_unsupported
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
    assert by_line[14] == 'Line 14: Invalid value for \'method\': "GET". Supported values are: "POST".'
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
        line("a", method="GET", body={"model": "ignored", "messages": []}),   # bad line: its model does not count
        line("b", body={"model": "m2", "messages": []}),
        line("c", body={"model": "m2", "messages": []}),
        line("d", body={"model": "m3", "messages": []}),
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
    return [b'{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}' % i
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
    ]
    result = validate(b"\n".join(lines), EMBEDDINGS)
    assert result.errors == [] and result.embedding_inputs == 8 and result.model == "e"
    # Only an embeddings batch counts inputs.
    assert validate(line(body={"model": "m", "messages": [], "input": ["a", "b"]})).embedding_inputs == 0


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


# --- the fast path (many lines per msgspec call) against the per-line path --------------------
#
# Fed whole (or in big pieces), runs of lines go through the fast path and only the runs it
# rejects go line by line; fed one byte at a time, every line is completed by a piece and so
# goes through the per-line path on its own. The two must agree on everything.

def _per_line(data: bytes, endpoint: str = CHAT, **kw: object) -> ValidationResult:
    return validate(data, endpoint, piece=1, **kw)


def _bad_lines(i: int, url: str) -> list[bytes]:
    """One line of every kind of problem (and of unusual but valid lines), for request i."""
    ok = {"custom_id": f"x{i}", "method": "POST", "url": url, "body": {"model": "m1", "messages": []}}
    good = msgspec.json.encode(ok)
    return [
        b'{"custom_id": "x", "method": ',                                  # truncated
        b"[1, 2, 3]", b'"just a string"', b"nope", b"{}",
        line(OMIT, url=url), line(f"a{i}", method=OMIT, url=url), line(f"b{i}", url=OMIT),
        line(f"c{i}", url=url, body=OMIT), line(f"d{i}", url=url, body="a string"),
        line(f"e{i}", url=url, body=None), line(42, url=url), line("", url=url),
        line("x" * 513, url=url), line("é" * 512, url=url),               # too long / just fits
        line("r0", url=url),                                               # duplicate of a good line
        line(f"f{i}", method="GET", url=url), line(f"g{i}", url="/nope"),
        line(f"h{i}", url=url, body={"messages": []}), line(f"k{i}", url=url, body={"model": 5}),
        line(f"l{i}", url=url, body={"model": "other"}), line(f"n{i}", url=url, body={"model": ""}),
        line(f"o{i}", url=url, body={"model": "m1", "messages": [], "stream": True}),
        line(f"p{i}", url=url, body={"model": "m1", "messages": [], "stream": "yes"}),   # fine: only true is refused
        line(f"q{i}", url=url, body={"model": "m1", "messages": [], "stream": 1}),       # fine too
        line(f"m{i}", url=url, body={"model": "m1"}),                       # no messages (or input)
        good[:-1] + b',"z":"\xc3"}',                                       # bad UTF-8 in a skipped field
        good[:-1] + b',"z":"\xe2\x80"}',
        good.replace(b'"messages":[]', b'"messages":["\xff"]'),
        good + good,                                                       # two objects on one line
        good[:-2] + b"\n" + b"]}}",                                        # one object over two lines
        b" " + line(f"s{i}", url=url), line(f"t{i}", url=url) + b"  ",      # fine, oddly written
        b'{"custom_id":"u%d","method":"POST","url":"%s","body":{"model":"m1","messages":[],"x":%s}}'
        % (i, url.encode(), b"[" * 3000 + b"]" * 3000),                    # nested too deep
        b"\x0b",                                                           # blank (isspace), not JSON space
        line(f"v{i}", url=url, body={"model": "m1", "messages": [{"role": "user", "content": "Ünïcödé 東京 “q”"}]}),
        line(f"w{i}", url=url, custom=True),                               # unknown top-level field: fine
    ]


def _mixed(seed: int, url: str = CHAT, n: int = 300, p_bad: float = 0.05, p_blank: float = 0.05) -> bytes:
    import random
    rnd = random.Random(seed)
    lines = []
    for i in range(n):
        r = rnd.random()
        if r < p_blank:
            lines.append(rnd.choice([b"", b"  ", b"\t", b"\r", b" \r"]))
        elif r < p_blank + p_bad:
            lines.append(rnd.choice(_bad_lines(i, url)))
        else:
            body: dict = {"model": "m1", "messages": [{"role": "user", "content": rnd.choice(
                ["hi", "café — “quoted” 東京", "x" * rnd.randint(0, 3000)])}]}
            if url == EMBEDDINGS:
                body = {"model": "m1", "input": rnd.choice(["s", ["a", "b"], [1, 2], [[1], [2]], []])}
            lines.append(line(f"r{i}", url=url, body=body))
    sep = rnd.choice([b"\n", b"\r\n"])
    data = sep.join(lines) + rnd.choice([sep, b""])
    return b"\xef\xbb\xbf" + data if rnd.random() < 0.3 else data


@pytest.mark.parametrize("seed", range(12))
def test_fast_path_and_per_line_path_agree(seed):
    url = EMBEDDINGS if seed % 4 == 3 else CHAT
    p_bad = [0.0, 0.01, 0.05, 0.3, 0.9][seed % 5]
    data = _mixed(seed, url, p_bad=p_bad, p_blank=0.1 if seed % 3 == 0 else 0.0)
    for chunk_size in (1, 7, 256):
        reference = _per_line(data, url, chunk_size=chunk_size)
        for piece in (None, 1 << 20, 4096, 1000):
            assert validate(data, url, piece=piece, chunk_size=chunk_size) == reference
    if p_bad == 0.0:
        assert reference.errors == [] and reference.chunks


def test_every_kind_of_bad_line_agrees_wherever_it_sits():
    # Each bad line alone among good ones, at the start, middle and end of a run.
    for i, bad in enumerate(_bad_lines(0, CHAT)):
        for at in (1, 40, 99):
            lines = [line(f"r{k}") for k in range(100)]
            lines[at] = bad
            data = b"\n".join(lines) + b"\n"
            assert validate(data) == _per_line(data), (i, at, bad[:80])


def _count_per_line_calls(monkeypatch) -> list[int]:
    calls = [0]
    original = Validator._line

    def counting(self, text, size):
        calls[0] += 1
        return original(self, text, size)

    monkeypatch.setattr(Validator, "_line", counting)
    return calls


def test_clean_lines_take_the_fast_path(monkeypatch):
    calls = _count_per_line_calls(monkeypatch)
    data = b"\n".join(line(f"r{i}", body={"model": "m1", "messages": [{"role": "user", "content": "é東"}]})
                      for i in range(2000)) + b"\n"
    result = validate(data)
    assert result.errors == [] and result.total == 2000 and sum(c.count for c in result.chunks) == 2000
    assert calls[0] == 1            # only the file's first line (it could start with a BOM)


def test_one_bad_line_costs_only_its_run_the_per_line_path(monkeypatch):
    calls = _count_per_line_calls(monkeypatch)
    lines = [line(f"r{i}") for i in range(2000)]
    lines[1234] = line("r7")                          # duplicate of line 8
    result = validate(b"\n".join(lines) + b"\n")
    assert codes(result) == [("duplicate_custom_id", "custom_id", 1235)]
    assert "another request (line 8)" in result.errors[0].message
    assert calls[0] <= 1 + 32


def test_duplicate_of_an_id_the_fast_path_recorded_names_its_line():
    lines = [line(f"r{i}") for i in range(1000)]
    data = b"\n".join(lines) + b"\n\n" + line("r500") + b"\n" + line("r999", method="GET") + b"\n"
    result = validate(data, piece=4096)
    assert codes(result) == [("duplicate_custom_id", "custom_id", 1002), ("duplicate_custom_id", "custom_id", 1003)]
    assert "another request (line 501)" in result.errors[0].message
    assert "another request (line 1000)" in result.errors[1].message
    assert result == _per_line(data)


def test_duplicates_within_one_run_are_found():
    lines = [line(f"r{i % 150}") for i in range(300)]
    result = validate(b"\n".join(lines))
    assert [e.line for e in result.errors] == list(range(151, 301))
    assert result.errors[0].message.startswith('Line 151: The custom_id "r0" for this request is a duplicate of another request (line 1).')


def test_invalid_utf8_inside_a_skipped_field_is_found_by_the_fast_path():
    lines = [line(f"r{i}", body={"model": "m1", "messages": [{"role": "user", "content": "ok é"}]})
             for i in range(500)]
    lines[321] = lines[321].replace("é".encode(), b"\xc3")
    data = b"\n".join(lines) + b"\n"
    result = validate(data)
    assert codes(result) == [("invalid_json_line", None, 322)]
    assert result.errors[0].message.startswith("Line 322: This line is not parseable as valid JSON (it is not valid UTF-8).")
    assert result == _per_line(data)


def test_model_set_by_a_fast_run_is_enforced_later():
    data = b"\n".join([line(f"r{i}") for i in range(400)] + [line("x", body={"model": "m2"})])
    result = validate(data)
    assert codes(result) == [("mismatched_model", "body.model", 401)]
    assert "of line 1" in result.errors[0].message and result.model == "m1"


def test_nesting_depth_limit_is_the_same_on_both_paths():
    # How deep JSON may nest before msgspec raises RecursionError depends on the stack; both
    # paths must draw the line at the same depth, whatever it is. (Both calls below are made
    # from the same depth: a helper in between would itself move the line by one.)
    import sys
    top = sys.getrecursionlimit()
    verdicts = set()
    for depth in range(top - 120, top + 5):
        nested = b"[" * depth + b"]" * depth
        deep = b'{"custom_id":"d","method":"POST","url":"%s","body":{"model":"m1","messages":[],"x":%s}}' % (CHAT.encode(), nested)
        data = line("a") + b"\n" + deep + b"\n" + line("b") + b"\n"
        whole = validate(data)
        assert whole == validate(data, piece=1), depth
        verdicts.add(whole.error_count)
    assert verdicts == {0, 1}       # the limit was somewhere in the range


def test_pieces_may_be_any_bytes_like_object():
    data = _mixed(5)
    expected = validate(data)
    for kind in (bytearray, memoryview):
        v = Validator(CHAT)
        for i in range(0, len(data), 3000):
            v.feed(kind(data[i:i + 3000]))
        assert v.finish() == expected


def test_mostly_bad_pieces_then_good_ones():
    # Pieces of mostly bad lines make the validator go line by line for a while; the outcome
    # must not depend on it.
    bad = [b"nope %d" % i for i in range(3000)]
    wrong = [line(f"w{i}", body={"model": "other"}) for i in range(3000)]
    good = [line(f"r{i}") for i in range(3000)]
    for lines in (bad + good, good[:10] + wrong + good[10:], wrong + bad + good):
        data = b"\n".join(lines) + b"\n"
        assert validate(data, piece=8192) == _per_line(data)


def test_values_spread_over_lines_cannot_make_up_the_count():
    # Two objects on one line plus one object over two lines: as many JSON values as lines,
    # yet three bad lines. Only lines shaped `{...}` may go through the fast path.
    good = [line(f"r{i}") for i in range(10)]
    whole = line("x1")
    data = b"\n".join(good[:5] + [line("y1") + line("y2"), whole[:-2], whole[-2:]] + good[5:]) + b"\n"
    result = validate(data)
    assert codes(result) == [("invalid_json_line", None, 6), ("invalid_json_line", None, 7),
                             ("invalid_json_line", None, 8)]
    assert result == _per_line(data)


def test_models_are_compared_when_no_line_has_set_the_model_yet():
    # The first line is bad, so the model is still unknown when the fast path sees the rest.
    data = b"\n".join([b"nope"] + [line(f"r{i}") for i in range(50)] + [line("x", body={"model": "m2"})]
                      + [line(f"s{i}") for i in range(50)]) + b"\n"
    result = validate(data)
    assert codes(result) == [("invalid_json_line", None, 1), ("mismatched_model", "body.model", 52)]
    assert result.model == "m1" and "of line 2" in result.errors[1].message
    assert result == _per_line(data)


@pytest.mark.parametrize("piece", [None, 1 << 20, 100_000])
def test_the_request_limit_falls_inside_a_run_of_good_lines(piece):
    lines = _small_lines(MAX_REQUESTS + 5)
    lines[MAX_REQUESTS + 2:MAX_REQUESTS + 2] = [b"", b"  "]          # blank lines past the limit
    result = validate(b"\n".join(lines) + b"\n", piece=piece)
    assert codes(result) == [("too_many_requests", None, MAX_REQUESTS + 1)]
    assert result.total == MAX_REQUESTS + 5 and result.chunks == []
