"""What an input file must be (SPEC sections 4 and 9): the limits, the endpoints' rules, and the
error of each code, worded here and nowhere else so that every message can be read side by side.

Each function returns the LineError of one code; `n` is the 1-based line number. A message
starts with "Line n: " (it is often read without its `line` field), then says what OpenAI's
Batch API says for the same problem where its words are known (as its answers were recorded
in meta-llama/llama-stack tests/integration/batches/test_batches_errors.py), then what to do.
"""

from __future__ import annotations

import re

import msgspec

from .lines import LineError, describe, kind

MAX_FILE_BYTES = 200 * 1000 * 1000      # "200 MB"
MAX_REQUESTS = 50_000
MAX_EMBEDDING_INPUTS = 50_000
MAX_REPORTED_ERRORS = 1000
MAX_CUSTOM_ID_CHARS = 512

EMBEDDINGS_ENDPOINT = "/v1/embeddings"

# The body field each endpoint cannot do without (SPEC section 4, as OpenAI checks it); the keys
# are the endpoints a batch may target, batch.ENDPOINTS (a test keeps the two in step).
REQUIRED_BODY_FIELD = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
    "/v1/responses": "input",
    "/v1/moderations": "input",
    "/v1/images/generations": "prompt",
    "/v1/images/edits": "prompt",
    "/v1/videos": "prompt",
}

# The product names OpenAI puts before "Streaming is not supported in the Batch API."
ENDPOINT_NAMES = {
    "/v1/chat/completions": "Chat Completions", "/v1/completions": "Completions",
    "/v1/embeddings": "Embeddings", "/v1/responses": "Responses", "/v1/moderations": "Moderations",
    "/v1/images/generations": "Image Generations", "/v1/images/edits": "Image Edits", "/v1/videos": "Videos",
}

LINE_FIELDS = "custom_id, method, url and body"


# --- line errors, in the order the per-line path checks them ---------------------------------

# A \uD800-\uDBFF escape (an odd number of backslashes before the u) not followed by a low half.
_LONE_HIGH_SURROGATE = re.compile(rb"(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2})(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})")

def invalid_json(n: int, text: bytes, exc: Exception) -> LineError:
    """`exc` is what decoding the line raised (a ValidationError: valid JSON, but not an object)."""
    if isinstance(exc, msgspec.ValidationError):
        why = f"it is {kind(text.lstrip())}, not an object"
    elif isinstance(exc, UnicodeDecodeError):
        why = "it is not valid UTF-8"
    elif (lone := _LONE_HIGH_SURROGATE.search(text)) and ("escape" in str(exc) or "truncated" in str(exc)):
        # msgspec's words for it depend on what follows the escape: "truncated" before a quote,
        # "unexpected end of hex escape" before a letter; the line is complete either way.
        why = (f"its escape {lone.group(1).decode()} is half of a UTF-16 surrogate pair, without the "
               "\\udc00-\\udfff escape that must follow it")
    elif str(exc) == "Input data was truncated":
        why = "it ends before its JSON is complete"
    else:
        why = str(exc)
    return LineError("invalid_json_line", f"Line {n}: This line is not parseable as valid JSON ({why}). "
                     f"Each line must be one JSON object with {LINE_FIELDS}.", None, n)


def missing_field(n: int, field: str) -> LineError:
    return LineError("missing_required_parameter",
                     f"Line {n}: Missing required parameter: '{field}'. Each line needs {LINE_FIELDS}.",
                     field, n)


def body_not_an_object(n: int, raw_body: bytes) -> LineError:
    return LineError("missing_required_parameter",
                     f"Line {n}: Invalid type for 'body': expected an object, but got {kind(raw_body)} "
                     "instead. Put the request's parameters in a JSON object under 'body'.", "body", n)


def custom_id_not_a_string(n: int, custom_id: object) -> LineError:
    return LineError("invalid_custom_id",
                     f"Line {n}: Invalid type for 'custom_id': expected a string, but got "
                     f"{describe(custom_id)} instead. Give each request a string id of its own.", "custom_id", n)


def custom_id_empty(n: int) -> LineError:
    return LineError("invalid_custom_id",
                     f"Line {n}: 'custom_id' is empty. Give each request a string id of its own.", "custom_id", n)


def custom_id_too_long(n: int, custom_id: str) -> LineError:
    return LineError("invalid_custom_id",
                     f"Line {n}: 'custom_id' has {len(custom_id)} characters; "
                     f"at most {MAX_CUSTOM_ID_CHARS} are allowed. Use a shorter id.", "custom_id", n)


def duplicate_custom_id(n: int, custom_id: str, first_use: int) -> LineError:
    return LineError("duplicate_custom_id",
                     f"Line {n}: The custom_id {describe(custom_id)} for this request is a duplicate of another "
                     f"request (line {first_use}). The custom_id parameter must be unique for each request "
                     "in a batch.", "custom_id", n)


def invalid_method(n: int, method: object) -> LineError:
    return LineError("invalid_method",
                     f"Line {n}: Invalid value for 'method': {describe(method)}. Supported values are: \"POST\".",
                     "method", n)


def mismatched_url(n: int, url: object, endpoint: str) -> LineError:
    return LineError("mismatched_url",
                     f"Line {n}: The URL provided for this request does not match the batch endpoint: 'url' is "
                     f"{describe(url)}, the batch's endpoint {describe(endpoint)}. Every line must use the "
                     "batch's endpoint.", "url", n)


def missing_model(n: int, model: object, unset: bool) -> LineError:
    got = "missing" if unset else f"{describe(model)}, not a model name"
    return LineError("missing_model",
                     f"Line {n}: Model parameter is required: 'body.model' is {got}. Every request must name "
                     "its model.", "body.model", n)


def mismatched_model(n: int, model: str, batch_model: str, model_line: int) -> LineError:
    return LineError("mismatched_model",
                     f"Line {n}: The model {describe(model)} of this request does not match the model "
                     f"{describe(batch_model)} of line {model_line}. All requests of a batch must use the "
                     "same model; put each model in a batch of its own.", "body.model", n)


def missing_body_field(n: int, field: str, endpoint: str) -> LineError:
    return LineError("missing_required_parameter",
                     f"Line {n}: {field.capitalize()} parameter is required: every {endpoint} request needs "
                     f"'{field}' in its body.", f"body.{field}", n)


def streaming_unsupported(n: int, endpoint: str) -> LineError:
    name = ENDPOINT_NAMES.get(endpoint, endpoint)
    return LineError("streaming_unsupported",
                     f"Line {n}: {name}: Streaming is not supported in the Batch API. Remove 'stream' from "
                     "the body or set it to false.", "body.stream", n)


# --- file errors ----------------------------------------------------------------------------

def file_too_large(max_bytes: int) -> LineError:
    return LineError("file_too_large",
                     f"The file is larger than {max_bytes / 1e6:g} MB ({max_bytes:,} bytes), the most "
                     "a batch input file may hold; split it into several files.", None, None)


def empty_file() -> LineError:
    return LineError("empty_file", "The batch input file is empty: it has no requests. Put one JSON request "
                     "object on each line.", None, None)


def too_many_requests(total: int, over_line: int) -> LineError:
    return LineError("too_many_requests",
                     f"The file has {total:,} requests; a batch may have at most {MAX_REQUESTS:,} "
                     f"(line {over_line} is the first over the limit). Split it into several batches.",
                     None, over_line)


def too_many_embedding_inputs(inputs: int, line: int) -> LineError:
    return LineError("too_many_embedding_inputs",
                     f"The file has {inputs:,} embedding inputs; an embeddings batch may have at most "
                     f"{MAX_EMBEDDING_INPUTS:,} (passed on line {line}). Split it into several batches.",
                     "body.input", line)


def model_not_found(n: int, model: str) -> LineError:
    return LineError("model_not_found",
                     f"Line {n}: The provided model {describe(model)} is not supported by the Batch API: no "
                     "provider configured on this gateway serves it. Use a model one of them serves.",
                     "body.model", n)
