"""What the operator (or a test) chose for the mock's behaviour.

The same Struct comes from the command line at start and from `POST /_mock/config` on a running
mock; `__post_init__` checks it both ways, so a bad value is one message that names the field.
"""

from __future__ import annotations

from typing import Any

import msgspec


class MockSettings(msgspec.Struct, forbid_unknown_fields=True):
    latency_ms: float = 0.0
    fail_rate: float = 0.0  # fraction answered 500/502/503 with an OpenAI error body
    rate_limit_rate: float = 0.0  # fraction answered 429 with retry headers
    # Every 429 carries `retry-after-ms: <this>` and `Retry-After: <this in whole seconds, at least 1>`;
    # None sends 429s without either header.
    retry_after_ms: int | None = 20
    seed: int | None = None
    api_key: str | None = None  # when set, requests without `Authorization: Bearer <key>` get 401
    # At most this many requests are answered at once; one that arrives while as many are being
    # answered gets 429 at once (None: no limit).
    max_in_flight: int | None = None
    # Every request is answered 429 from `rate_limit_after` to `rate_limit_after + rate_limit_seconds`
    # after start (or after the `/_mock/config` call that sets them).
    rate_limit_after: float = 0.0
    rate_limit_seconds: float = 0.0
    # The provider's port refuses connections (and drops open ones) from `outage_after` to
    # `outage_after + outage_seconds` after start (or after the `/_mock/config` call that sets them).
    outage_after: float = 0.0
    outage_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("fail_rate", "rate_limit_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be between 0 and 1; got {value}.")
        if self.latency_ms < 0:
            raise ValueError(f"`latency_ms` must be 0 or more; got {self.latency_ms}.")
        for name in ("rate_limit_after", "rate_limit_seconds", "outage_after", "outage_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be 0 or more seconds; got {getattr(self, name)}.")
        if self.max_in_flight is not None and self.max_in_flight < 0:
            raise ValueError(f"`max_in_flight` must be 0 or more; got {self.max_in_flight}.")
        if self.retry_after_ms is not None and self.retry_after_ms < 0:
            raise ValueError(f"`retry_after_ms` must be 0 or more; got {self.retry_after_ms}.")


FIELDS = MockSettings.__struct_fields__


def changed(settings: MockSettings, changes: dict[str, Any]) -> MockSettings:
    """`settings` with `changes` applied, checked as a whole (raises msgspec.ValidationError)."""
    return msgspec.convert({**msgspec.structs.asdict(settings), **changes}, MockSettings)


def public_view(settings: MockSettings) -> dict[str, Any]:
    """The settings as `/_mock/stats` shows them: the key the mock requires is never shown."""
    view = msgspec.structs.asdict(settings)
    view["api_key"] = None if settings.api_key is None else "(set)"
    return view
