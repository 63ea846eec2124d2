"""The validator's parity rules with OpenAI (SPEC section 4, "Also checked, as OpenAI does"):
each endpoint's required body field, model_not_found. Pure unit tests, no database."""

from __future__ import annotations

import msgspec
import pytest

from eventbatch.batch import ENDPOINTS
from eventbatch.validation import ValidationResult, Validator
from eventbatch.validation.rules import REQUIRED_BODY_FIELD
from eventbatch.worker.providers import Provider, model_check, provider_for

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
    assert result.errors[0].message == (f"Line 8: {field.capitalize()} parameter is required: every {endpoint} "
                                        f"request needs '{field}' in its body.")
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


# --- model_not_found ---------------------------------------------------------------------------

CHAT = "/v1/chat/completions"


def test_without_a_predicate_every_model_is_served():
    data = b"\n".join(good(f"r{i}", CHAT, model="anything-at-all") for i in range(50))
    assert both_paths(data, CHAT).errors == []


def test_a_served_model_is_fine_and_asked_about_once():
    asked: list[str] = []

    def serves(model: str) -> bool:
        asked.append(model)
        return model == "m1"

    data = b"\n".join(good(f"r{i}", CHAT) for i in range(500)) + b"\n"
    result = validate(data, CHAT, serves_model=serves)
    assert result.errors == [] and result.chunks and asked == ["m1"]


def test_a_model_no_provider_serves_is_model_not_found_on_the_first_line_naming_it():
    data = b"\n".join([b"nope", line("a", CHAT, messages=[]), good("b", CHAT, temperature=0)]
                      + [good(f"r{i}", CHAT) for i in range(300)]) + b"\n"
    result = both_paths(data, CHAT, serves_model=lambda m: m == "other")
    assert codes(result) == [("model_not_found", "body.model", 3), ("invalid_json_line", None, 1),
                             ("missing_model", "body.model", 2)]
    assert result.error_count == 3 and result.chunks == [] and result.model == "m1"
    message = result.errors[0].message
    assert message.startswith('Line 3: The provided model "m1" is not supported by the Batch API: ')


def test_model_not_found_with_other_models_in_the_file():
    data = b"\n".join([good("a", CHAT, model="gone"), good("b", CHAT, model="m1")])
    result = both_paths(data, CHAT, serves_model=lambda m: m == "m1")
    assert codes(result) == [("model_not_found", "body.model", 1), ("mismatched_model", "body.model", 2)]


def test_no_model_named_no_model_not_found():
    data = b"\n".join([line("a", CHAT, messages=[]), b"{broken"])
    result = both_paths(data, CHAT, serves_model=lambda m: False)
    assert [e.code for e in result.errors] == ["missing_model", "invalid_json_line"]


def test_the_providers_model_check_agrees_with_provider_for():
    named = [Provider(name="a", base_url="http://127.0.0.1:9/v1", models=["m1", "m2"]),
             Provider(name="b", base_url="http://127.0.0.1:8/v1", models=["m3"])]
    check = model_check(named)
    for model in ("m1", "m2", "m3", "m4", ""):
        assert check(model) == (provider_for(named, model) is not None)
    assert check("m3") and not check("m4")
    # A provider without a models list serves every model: nothing to check.
    assert model_check(named + [Provider(name="c", base_url="http://127.0.0.1:7/v1")]) is None
    assert model_check([Provider(name="default", base_url="http://127.0.0.1:7/v1")]) is None


def test_the_api_reads_the_models_of_its_providers_but_not_their_keys(tmp_path):
    from eventbatch.config import SettingsError, load_settings
    from eventbatch.worker.providers import configured_model_check, load_providers
    cfg = tmp_path / "providers.toml"
    cfg.write_text('[[providers]]\nname = "a"\nbase_url = "http://127.0.0.1:9/v1"\n'
                   'api_key_env = "EB_TEST_UNSET_KEY"\nmodels = ["m1"]\n')
    settings = load_settings({"EVENTBATCH_CONFIG": str(cfg)})
    with pytest.raises(SettingsError):
        load_providers(settings, env={})                # a worker needs the key
    check = configured_model_check(settings)            # the API does not
    assert check is not None and check("m1") and not check("m2")
    assert configured_model_check(load_settings({})) is None                     # nothing configured here
    assert configured_model_check(load_settings({"EVENTBATCH_UPSTREAM_URL": "http://127.0.0.1:9/v1"})) is None


def test_model_not_found_survives_the_error_cap():
    from eventbatch.validation import MAX_REPORTED_ERRORS
    data = b"\n".join([good("a", CHAT, model="gone")] + [b"nope"] * (MAX_REPORTED_ERRORS + 10))
    result = validate(data, CHAT, serves_model=lambda m: False)
    assert result.errors[0].code == "model_not_found" and len(result.errors) == MAX_REPORTED_ERRORS
    assert result.error_count == MAX_REPORTED_ERRORS + 11


# --- the words: OpenAI's where they are known ---------------------------------------------------

def test_messages_say_what_openai_says():
    chat = "/v1/chat/completions"
    data = b"\n".join([
        good("ok", chat),
        b"{invalid json here",
        msgspec.json.encode({"method": "POST", "url": chat, "body": {"model": "m1", "messages": []}}),
        line("s", chat, model="m1", messages=[], stream=True),
        line("u", "/v1/embeddings", model="m1", messages=[]),
        line("nm", chat, messages=[]),
        line("nmsg", chat, model="m1", max_tokens=10),
        line("d", chat, model="m1", messages=[]).replace(b'"d"', b'"ok"'),
    ])
    result = both_paths(data, chat, serves_model=lambda m: False)
    said = {(e.code, e.line): e.message for e in result.errors}
    # OpenAI's answers as recorded against its API (see rules.py); ours add the line and what to do.
    assert said["model_not_found", 1].startswith(
        'Line 1: The provided model "m1" is not supported by the Batch API')
    assert said["invalid_json_line", 2].startswith("Line 2: This line is not parseable as valid JSON")
    assert said["missing_required_parameter", 3].startswith("Line 3: Missing required parameter: 'custom_id'.")
    assert said["streaming_unsupported", 4].startswith(
        "Line 4: Chat Completions: Streaming is not supported in the Batch API.")
    assert said["mismatched_url", 5].startswith(
        "Line 5: The URL provided for this request does not match the batch endpoint")
    assert said["missing_model", 6].startswith("Line 6: Model parameter is required")
    assert said["missing_required_parameter", 7].startswith("Line 7: Messages parameter is required")
    assert said["duplicate_custom_id", 8].endswith(
        "The custom_id parameter must be unique for each request in a batch.")
    assert len(said) == 8


def test_a_streaming_line_names_its_endpoint():
    data = line("s", "/v1/responses", model="m1", input="hi", stream=True)
    [error] = both_paths(data, "/v1/responses").errors
    assert (error.code, error.param, error.line) == ("streaming_unsupported", "body.stream", 1)
    assert error.message.startswith("Line 1: Responses: Streaming is not supported in the Batch API.")


def test_a_lone_surrogate_escape_is_named_not_called_incomplete():
    url = "/v1/chat/completions"
    lone = (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
            b'"body": {"model": "m1", "messages": [{"role": "user", "content": "x\\ud800y"}]}}\n')
    cut = b'{"custom_id": "b", "method": "POST", "url": "/v1/chat/comp\n'
    at_end = lone.replace(b'x\\ud800y"', b'x\\ud800"').replace(b'"a"', b'"c"')   # msgspec: "truncated"
    result = both_paths(good("ok", url) + b"\n" + lone + at_end + cut, url)
    (first, second, third) = result.errors
    for e, n in ((first, 2), (second, 3)):
        assert e.line == n and "\\ud800 is half of a UTF-16 surrogate pair" in e.message, e.message
    assert third.line == 4 and "ends before its JSON is complete" in third.message
