"""The validator's parity rules with OpenAI (SPEC section 4, "Also checked, as OpenAI does"):
each endpoint's required body field, model_not_found. Pure unit tests, no database."""

from __future__ import annotations

import msgspec
import pytest

from eventbatch.batch import ENDPOINTS
from eventbatch.validation import ValidationResult, Validator
from eventbatch.validation.rules import REQUIRED_BODY_FIELD
from eventbatch.worker.providers import Provider

REQUIRED = {
    "/v1/chat/completions": "messages", "/v1/completions": "prompt", "/v1/embeddings": "input",
    "/v1/responses": "input", "/v1/moderations": "input", "/v1/images/generations": "prompt",
    "/v1/images/edits": "prompt", "/v1/videos": "prompt",
}
VALUES = {"messages": [{"role": "user", "content": "hi"}], "prompt": "a red fox", "input": "some text"}


def line(custom_id: str, url: str, **body: object) -> bytes:
    return msgspec.json.encode({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def good(custom_id: str, url: str, model: str = "m1", **extra: object) -> bytes:
    field = REQUIRED[url]
    return line(custom_id, url, model=model, **{field: VALUES[field]}, **extra)


def validate(data: bytes, endpoint: str, piece: int | None = None, **kw: object) -> ValidationResult:
    v = Validator(endpoint, **kw)
    for i in range(0, len(data), piece or len(data) or 1):
        v.feed(data[i:i + (piece or len(data))])
    return v.finish()


def both_paths(data: bytes, endpoint: str, **kw: object) -> ValidationResult:
    """The outcome fed whole (the fast path) and byte by byte (the per-line path); they agree."""
    whole = validate(data, endpoint, **kw)
    assert validate(data, endpoint, piece=1, **kw) == whole
    return whole


def codes(result: ValidationResult) -> list[tuple[str, str | None, int | None]]:
    return [(e.code, e.param, e.line) for e in result.errors]


# --- the endpoints and their required body fields ---------------------------------------------

def test_the_eight_endpoints_of_the_spec():
    assert set(ENDPOINTS) == set(REQUIRED) == set(REQUIRED_BODY_FIELD)
    assert REQUIRED_BODY_FIELD == REQUIRED


@pytest.mark.parametrize("endpoint", list(REQUIRED))
def test_a_line_with_its_endpoints_field_is_fine(endpoint):
    data = b"\n".join(good(f"r{i}", endpoint) for i in range(300)) + b"\n"
    result = both_paths(data, endpoint)
    assert result.errors == [] and result.total == 300 and result.model == "m1"
    assert sum(c.count for c in result.chunks) == 300


@pytest.mark.parametrize("endpoint", list(REQUIRED))
def test_a_line_without_its_endpoints_field_is_missing_required_parameter(endpoint):
    field = REQUIRED[endpoint]
    others = {k: v for k, v in VALUES.items() if k != field}      # the other endpoints' fields don't do
    lines = [good(f"r{i}", endpoint) for i in range(300)]
    lines[7] = line("x7", endpoint, model="m1", **others)
    lines[250] = line("x250", endpoint, model="m1", temperature=0.5)
    result = both_paths(b"\n".join(lines) + b"\n", endpoint)
    assert codes(result) == [("missing_required_parameter", f"body.{field}", 8),
                             ("missing_required_parameter", f"body.{field}", 251)]
    message = result.errors[0].message
    assert message.startswith("Line 8: ") and f"'body.{field}'" in message and endpoint in message
    assert result.chunks == []


def test_a_null_required_field_is_present_upstream_judges_its_value():
    data = line("a", "/v1/chat/completions", model="m1", messages=None)
    assert both_paths(data, "/v1/chat/completions").errors == []


def test_the_required_field_comes_after_the_model_and_before_stream():
    chat = "/v1/chat/completions"
    data = b"\n".join([
        good("a", chat),
        line("b", chat),                                          # no model either: missing_model wins
        line("c", chat, model="other"),                           # another model: mismatched_model wins
        line("d", chat, model="m1", stream=True),                 # no messages: that wins over stream
        good("e", chat, stream=True),                             # streaming_unsupported
    ]) + b"\n"
    assert codes(both_paths(data, chat)) == [
        ("missing_model", "body.model", 2), ("mismatched_model", "body.model", 3),
        ("missing_required_parameter", "body.messages", 4), ("streaming_unsupported", "body.stream", 5)]


def test_the_first_line_sets_the_model_even_without_its_required_field():
    chat = "/v1/chat/completions"
    data = line("a", chat, model="m2") + b"\n" + good("b", chat, model="m1") + b"\n"
    result = both_paths(data, chat)
    assert codes(result) == [("missing_required_parameter", "body.messages", 1),
                             ("mismatched_model", "body.model", 2)]
    assert result.model == "m2"


def test_embedding_inputs_are_still_counted_with_input_required():
    emb = "/v1/embeddings"
    data = b"\n".join(line(f"r{i}", emb, model="e", input=["a", "b", "c"]) for i in range(100)) + b"\n"
    assert both_paths(data, emb).embedding_inputs == 300


@pytest.mark.parametrize("endpoint", list(REQUIRED))
def test_every_endpoint_has_a_provider_url(endpoint):
    # The worker sends a line with url '/v1/<path>' to '{base_url}/<path>'.
    p = Provider(name="p", base_url="http://127.0.0.1:9/v1")
    assert p.url_for(endpoint) == "http://127.0.0.1:9/v1" + endpoint.removeprefix("/v1")
