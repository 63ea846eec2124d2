"""The deterministic answer of each endpoint: content and usage are functions of the request body,
so tests can predict them; only ids and `created` differ between two answers to one body."""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from typing import Any, Callable, Iterator

from .envelopes import encode, hex_id

_MAX_DIMENSIONS = 4096


def _pieces(value: Any) -> Iterator[str | int]:
    """The text of a prompt, message list or input items, in order, and each token id (an int).
    A stack, not recursion: a request nested a thousand deep is still answered."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, list):
            stack.extend(reversed(v))
        elif isinstance(v, dict):
            content = v.get("content")
            if content is not None:
                stack.append(content)
            elif isinstance(text := v.get("text"), str):
                yield text
        elif isinstance(v, int):
            yield v


def _chars(value: Any) -> int:
    """Characters of text in a prompt, message list or input items; a token id counts as 4."""
    return sum(len(p) if isinstance(p, str) else 4 for p in _pieces(value))


def _text(value: Any) -> str:
    return "".join(p for p in _pieces(value) if isinstance(p, str))


def _tokens(value: Any) -> int:
    return _chars(value) // 4 + 1


def _limit(body: dict, *names: str, default: int = 8) -> int:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return default


def _echo(value: Any) -> str:
    last = value[-1] if isinstance(value, list) and value else value
    return "echo: " + _text(last)[:32]


def chat(body: dict, model: str) -> dict:
    messages = body.get("messages")
    prompt = _tokens(messages)
    completion = _limit(body, "max_completion_tokens", "max_tokens")
    return {
        "id": "chatcmpl-" + hex_id(29),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": _echo(messages), "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }


def completion(body: dict, model: str) -> dict:
    prompt_value = body.get("prompt")
    prompt = _tokens(prompt_value)
    completion = _limit(body, "max_tokens")
    return {
        "id": "cmpl-" + hex_id(29),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"text": _echo(prompt_value), "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def _inputs(value: Any) -> list[Any]:
    """One input per string; a list of token ids is one input."""
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return value
    return [value]


def _vector(item: Any, dimensions: int) -> list[float]:
    seed = item.encode() if isinstance(item, str) else encode(item)
    digest = hashlib.blake2b(seed, digest_size=64).digest()
    return [round(digest[i % 64] / 127.5 - 1.0, 6) for i in range(dimensions)]


def embeddings(body: dict, model: str) -> dict:
    inputs = _inputs(body.get("input"))
    dimensions = min(_limit(body, "dimensions", default=8) or 8, _MAX_DIMENSIONS)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    prompt = 0
    for index, item in enumerate(inputs):
        vector: Any = _vector(item, dimensions)
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
        prompt += _tokens(item)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}


def response(body: dict, model: str) -> dict:
    input_value = body.get("input")
    instructions = body.get("instructions")
    input_tokens = _tokens(input_value) + (_chars(instructions) // 4 if isinstance(instructions, str) else 0)
    output_tokens = _limit(body, "max_output_tokens")
    return {
        "id": "resp_" + hex_id(48),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [{
            "type": "message",
            "id": "msg_" + hex_id(48),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": _echo(input_value), "annotations": []}],
        }],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "temperature": 1.0,
        "top_p": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "metadata": {},
    }


_MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors",
    "violence", "violence/graphic",
)
_UNFLAGGED = {
    "flagged": False,
    "categories": {c: False for c in _MODERATION_CATEGORIES},
    "category_scores": {c: 0.0 for c in _MODERATION_CATEGORIES},
}


def moderation(body: dict, model: str) -> dict:
    value = body.get("input")
    # A list of strings is several inputs; a list of text/image parts is one multimodal input.
    count = len(value) if isinstance(value, list) and value and all(isinstance(v, str) for v in value) else 1
    return {"id": "modr-" + hex_id(29), "model": model, "results": [_UNFLAGGED] * count}


MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-small", "text-embedding-3-large",
          "omni-moderation-latest")


def model_list() -> dict:
    return {"object": "list", "data": [model(m) for m in MODELS]}


def model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "mock"}


Answer = Callable[[dict, str], dict]
"""An endpoint's answer: (request body, model) → response body."""

# Raised by an answer when a field has a shape it cannot use; the request gets a 400.
SHAPE_ERRORS = (TypeError, ValueError, AttributeError, struct.error)

ANSWERS: dict[str, Answer] = {
    "/v1/chat/completions": chat,
    "/v1/completions": completion,
    "/v1/embeddings": embeddings,
    "/v1/responses": response,
    "/v1/moderations": moderation,
}
