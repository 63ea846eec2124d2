"""What the operator (or a test) chose for the mock's behaviour."""

from __future__ import annotations

import msgspec


class MockSettings(msgspec.Struct):
    latency_ms: float = 0.0
    fail_rate: float = 0.0  # fraction answered 500/502/503 with an OpenAI error body
    rate_limit_rate: float = 0.0  # fraction answered 429 with retry headers
    retry_after_ms: int = 20
    seed: int | None = None
    api_key: str | None = None  # when set, requests without `Authorization: Bearer <key>` get 401
