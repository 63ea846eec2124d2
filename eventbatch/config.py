"""Settings: the only reader of os.environ. A bad setting fails at start with one clear line."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping
from urllib.parse import parse_qsl, urlsplit

import msgspec


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line that says what to do."""


class Settings(msgspec.Struct, kw_only=True):
    database_url: str | None = None
    migration_database_url: str | None = None   # the schema owner's, for migrations (SPEC §14)
    data_dir: Path = Path(".eventbatch")
    upstream_url: str | None = None
    upstream_api_key: str | None = msgspec.field(default=None)
    config_path: Path | None = None
    window_seconds: float = 86400.0
    upstream_concurrency: int = 64
    upstream_timeout_seconds: float = 600.0
    max_attempts: int = 10
    # Capped exponential backoff between attempts of a request that failed transiently (5xx,
    # timeout, connection error) while its provider answers others: about `retry_base_seconds`
    # before the 2nd attempt, doubling, at most `retry_max_seconds` (SPEC §7: minutes, not seconds).
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    lease_seconds: float = 30.0
    log_format: str | None = None
    chunk_size: int = 256
    # Webhook deliveries (SPEC §12.4): the wait before the first retry (each later one waits 4×
    # longer, at most 12 h), how long a delivery is retried, and each attempt's time limit.
    webhook_backoff_seconds: float = 5.0
    webhook_retry_seconds: float = 72 * 3600.0
    webhook_timeout_seconds: float = 10.0
    # The longest an upload may take to send each piece (1 MiB) of its body; a slower one is cut
    # off with 408, so stalled clients cannot keep an upload open for ever.
    upload_read_timeout_seconds: float = 30.0

    def __repr__(self) -> str:  # never print the provider key
        return (f"Settings(database_url={mask_url(self.database_url) if self.database_url else 'embedded'}, "
                f"data_dir={self.data_dir})")


_ENV = {
    "EVENTBATCH_DATABASE_URL": "database_url",
    "EVENTBATCH_MIGRATION_DATABASE_URL": "migration_database_url",
    "EVENTBATCH_DATA_DIR": "data_dir",
    "EVENTBATCH_UPSTREAM_URL": "upstream_url",
    "EVENTBATCH_UPSTREAM_API_KEY": "upstream_api_key",
    "EVENTBATCH_CONFIG": "config_path",
    "EVENTBATCH_WINDOW_SECONDS": "window_seconds",
    "EVENTBATCH_UPSTREAM_CONCURRENCY": "upstream_concurrency",
    "EVENTBATCH_UPSTREAM_TIMEOUT_SECONDS": "upstream_timeout_seconds",
    "EVENTBATCH_MAX_ATTEMPTS": "max_attempts",
    "EVENTBATCH_RETRY_BASE_SECONDS": "retry_base_seconds",
    "EVENTBATCH_RETRY_MAX_SECONDS": "retry_max_seconds",
    "EVENTBATCH_LEASE_SECONDS": "lease_seconds",
    "EVENTBATCH_LOG_FORMAT": "log_format",
    "EVENTBATCH_CHUNK_SIZE": "chunk_size",
    "EVENTBATCH_WEBHOOK_BACKOFF_SECONDS": "webhook_backoff_seconds",
    "EVENTBATCH_WEBHOOK_RETRY_SECONDS": "webhook_retry_seconds",
    "EVENTBATCH_WEBHOOK_TIMEOUT_SECONDS": "webhook_timeout_seconds",
    "EVENTBATCH_UPLOAD_READ_TIMEOUT_SECONDS": "upload_read_timeout_seconds",
}
ENV_NAME = {field: name for name, field in _ENV.items()}   # Settings field -> its variable

# What the command-line client (`eventbatch batch …`, section 13) reads: where the API is, and a key.
_CLIENT_ENV = {"EVENTBATCH_BASE_URL": "base_url", "EVENTBATCH_API_KEY": "api_key"}
DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
SETTING_NAMES = tuple(_ENV) + tuple(_CLIENT_ENV)


class ClientSettings(msgspec.Struct, kw_only=True):
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None

    def __repr__(self) -> str:  # never print the key
        return f"ClientSettings(base_url={self.base_url!r}, api_key={'set' if self.api_key else 'unset'})"


def load_client_settings(env: Mapping[str, str] | None = None, **overrides) -> ClientSettings:
    """EVENTBATCH_BASE_URL and EVENTBATCH_API_KEY, flags winning over the variables."""
    env = os.environ if env is None else env
    raw = {field: env[name] for name, field in _CLIENT_ENV.items() if env.get(name, "") != ""}
    raw.update({k: v for k, v in overrides.items() if v})
    s = ClientSettings()
    if "base_url" in raw:
        url = str(raw["base_url"]).rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"EVENTBATCH_BASE_URL={url!r} is not an http(s) URL; set it (or --base-url) to "
                                f"the eventbatch API including /v1, e.g. {DEFAULT_BASE_URL}.")
        s.base_url = url
    if "api_key" in raw:
        s.api_key = str(raw["api_key"]).strip()
    return s


_USERINFO = re.compile(r"(?<=//)([^/?#]*)@")
_PASSWORD_PARAM = re.compile(r"(?i)([?&]password=)[^&#]*")


def mask_url(url: str) -> str:
    """A URL fit for a message: the password (user:***@host, or a password= parameter) masked.
    Works on strings urlsplit refuses too, since those are the ones error messages quote."""
    def userinfo(m: re.Match) -> str:
        user, colon, _ = m.group(1).partition(":")
        return f"{user}:***@" if colon else f"{user}@"
    return _PASSWORD_PARAM.sub(r"\1***", _USERINFO.sub(userinfo, url, count=1))


def has_credentials(url: str) -> bool:
    return _USERINFO.search(url) is not None


_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def check_database_url(env_name: str, url: str) -> str:
    """The checks asyncpg would otherwise fail on with a traceback: scheme, each host's port,
    sslmode. The message quotes the URL with its password masked."""
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise SettingsError(f"{env_name}={shown!r} is not a valid URL ({exc}); use "
                            "postgresql://user:password@host:port/database.") from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise SettingsError(f"{env_name} must be a postgresql://user:pass@host:port/db URL; "
                            "unset it to use the embedded Postgres.")
    for host in parts.netloc.rpartition("@")[2].split(","):   # libpq's host1:port1,host2:port2
        port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host.rpartition("]")[2] else ""
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise SettingsError(f"{env_name}={shown!r} has port {port!r}; a port is a number from 1 to 65535.")
    for name, value in parse_qsl(parts.query):
        if name == "sslmode" and value not in _SSLMODES:
            raise SettingsError(f"{env_name}={shown!r} has sslmode={value!r}; use one of {', '.join(_SSLMODES)}.")
        if name == "port" and not (value.isdigit() and 1 <= int(value) <= 65535):
            raise SettingsError(f"{env_name}={shown!r} has port {value!r}; a port is a number from 1 to 65535.")
    return url


def check_upstream_url(where: str, url: str, *, with_key: bool) -> str:
    """A provider's base URL: http(s), a host, and not credentials in the URL together with a key
    (both would be the request's Authorization header: aiohttp refuses every request then)."""
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError as exc:
        raise SettingsError(f"{where}: {shown!r} is not a valid URL ({exc}); give the provider's base URL "
                            "including /v1, e.g. https://api.openai.com/v1.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{where}: {shown!r} is not an http(s) URL; give the provider's base URL "
                            "including /v1, e.g. https://api.openai.com/v1.")
    if with_key and has_credentials(url):
        raise SettingsError(f"{where}: {shown!r} carries credentials and an API key is set too; both would be "
                            "the Authorization header: remove user:password@ from the URL, or the key.")
    return url.rstrip("/")


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
        s.database_url = check_database_url("EVENTBATCH_DATABASE_URL", str(raw["database_url"]))
    if "migration_database_url" in raw:
        s.migration_database_url = check_database_url("EVENTBATCH_MIGRATION_DATABASE_URL",
                                                      str(raw["migration_database_url"]))
    if "data_dir" in raw:
        s.data_dir = Path(raw["data_dir"])
    if "upstream_api_key" in raw:
        s.upstream_api_key = str(raw["upstream_api_key"])
    if "upstream_url" in raw:
        s.upstream_url = check_upstream_url("EVENTBATCH_UPSTREAM_URL", str(raw["upstream_url"]),
                                            with_key=bool(s.upstream_api_key))
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
        ("retry_base_seconds", float, 0.001, 3600),
        ("retry_max_seconds", float, 0.001, 86400),
        ("lease_seconds", float, 1, 3600),
        ("chunk_size", int, 1, 50_000),
        ("webhook_backoff_seconds", float, 0.01, 86400),
        ("webhook_retry_seconds", float, 1, 30 * 86400),
        ("webhook_timeout_seconds", float, 0.1, 300),
        ("upload_read_timeout_seconds", float, 0.5, 3600),
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
