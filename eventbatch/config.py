"""Settings: the only reader of os.environ. A bad setting fails at start with one clear line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

import msgspec


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line that says what to do."""


class Settings(msgspec.Struct, kw_only=True):
    database_url: str | None = None
    data_dir: Path = Path(".eventbatch")
    upstream_url: str | None = None
    upstream_api_key: str | None = msgspec.field(default=None)
    config_path: Path | None = None
    window_seconds: float = 86400.0
    upstream_concurrency: int = 64
    upstream_timeout_seconds: float = 600.0
    max_attempts: int = 8
    lease_seconds: float = 30.0
    log_format: str | None = None
    chunk_size: int = 256

    def __repr__(self) -> str:  # never print the provider key
        return f"Settings(database_url={'set' if self.database_url else 'embedded'}, data_dir={self.data_dir})"


_ENV = {
    "EVENTBATCH_DATABASE_URL": "database_url",
    "EVENTBATCH_DATA_DIR": "data_dir",
    "EVENTBATCH_UPSTREAM_URL": "upstream_url",
    "EVENTBATCH_UPSTREAM_API_KEY": "upstream_api_key",
    "EVENTBATCH_CONFIG": "config_path",
    "EVENTBATCH_WINDOW_SECONDS": "window_seconds",
    "EVENTBATCH_UPSTREAM_CONCURRENCY": "upstream_concurrency",
    "EVENTBATCH_UPSTREAM_TIMEOUT_SECONDS": "upstream_timeout_seconds",
    "EVENTBATCH_MAX_ATTEMPTS": "max_attempts",
    "EVENTBATCH_LEASE_SECONDS": "lease_seconds",
    "EVENTBATCH_LOG_FORMAT": "log_format",
    "EVENTBATCH_CHUNK_SIZE": "chunk_size",
}
SETTING_NAMES = tuple(_ENV)


def _number(env_name: str, raw: str, kind: type, low: float, high: float):
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{env_name}={raw!r} is not a {'whole ' if kind is int else ''}number; "
                            f"set it to a value between {low:g} and {high:g}.") from None
    if not (low <= value <= high):
        raise SettingsError(f"{env_name}={raw!r} is out of range; set it to a value between {low:g} and {high:g}.")
    return value


def load_settings(env: Mapping[str, str] | None = None, **overrides) -> Settings:
    """Read EVENTBATCH_* from `env` (default os.environ); command-line flags come as overrides."""
    env = os.environ if env is None else env
    raw = {field: env[name] for name, field in _ENV.items() if env.get(name, "") != ""}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    s = Settings()
    if "database_url" in raw:
        url = str(raw["database_url"])
        if urlsplit(url).scheme not in ("postgres", "postgresql"):
            raise SettingsError("EVENTBATCH_DATABASE_URL must be a postgresql://user:pass@host:port/db URL; "
                                "unset it to use the embedded Postgres.")
        s.database_url = url
    if "data_dir" in raw:
        s.data_dir = Path(raw["data_dir"])
    if "upstream_url" in raw:
        url = str(raw["upstream_url"]).rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"EVENTBATCH_UPSTREAM_URL={url!r} is not an http(s) URL; "
                                "set it to the provider's base URL including /v1, e.g. https://api.openai.com/v1.")
        s.upstream_url = url
    if "upstream_api_key" in raw:
        s.upstream_api_key = str(raw["upstream_api_key"])
    if "config_path" in raw:
        p = Path(raw["config_path"])
        if not p.is_file():
            raise SettingsError(f"EVENTBATCH_CONFIG={str(p)!r}: no such file; point it at a readable TOML file or unset it.")
        s.config_path = p
    for field, kind, low, high in (
        ("window_seconds", float, 1, 10 * 86400),
        ("upstream_concurrency", int, 1, 10_000),
        ("upstream_timeout_seconds", float, 0.1, 3600),
        ("max_attempts", int, 1, 100),
        ("lease_seconds", float, 1, 3600),
        ("chunk_size", int, 1, 50_000),
    ):
        if field in raw:
            env_name = next(n for n, f in _ENV.items() if f == field)
            # Flags are checked like the variables: a bad value fails at start, whatever its source.
            setattr(s, field, _number(env_name, str(raw[field]), kind, low, high))
    if "log_format" in raw:
        fmt = str(raw["log_format"])
        if fmt not in ("json", "console"):
            raise SettingsError(f"EVENTBATCH_LOG_FORMAT={fmt!r} is not valid; set it to 'json' or 'console'.")
        s.log_format = fmt
    return s
