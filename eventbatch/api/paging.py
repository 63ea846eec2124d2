"""Query parameters shared by the list routes."""

from __future__ import annotations

from typing import Mapping

from .errors import bad_request, invalid_value


def parse_limit(q: Mapping[str, str], *, default: int, high: int) -> int:
    raw = q.get("limit")
    if raw is None:
        return default
    # ASCII digits only: int() also takes '+5', '1_0' and other scripts' digits
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise bad_request(f"limit must be a whole number between 1 and {high}.", param="limit")
    value = int(raw)
    if not 1 <= value <= high:
        raise bad_request(f"limit must be between 1 and {high}; got {value}.", param="limit")
    return value


def parse_choice(q: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = q.get(name, default)
    if value not in choices:
        raise invalid_value(name, value, choices)
    return value
