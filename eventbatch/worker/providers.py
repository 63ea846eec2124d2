"""Upstream providers, from operator configuration only: EVENTBATCH_UPSTREAM_URL/_API_KEY, or
several in the EVENTBATCH_CONFIG TOML file. The host a request goes to never comes from a request.

    [[providers]]
    name = "openai"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"     # the name of the variable holding the key, never the key
    models = ["gpt-4o-mini"]           # omit to serve every model not claimed by another provider
    concurrency = 64                   # requests in flight from one worker process
    rpm = 500                          # optional: requests per minute, for the whole deployment
    tpm = 200000                       # optional: tokens per minute (estimated, settled by usage)
"""

from __future__ import annotations

import os
import tomllib
from typing import Callable, Mapping

import msgspec

from ..config import Settings, SettingsError, check_upstream_url, mask_url


class Provider(msgspec.Struct, kw_only=True):
    name: str
    base_url: str
    api_key: str | None = None
    models: list[str] | None = None
    concurrency: int = 64
    rpm: int | None = None
    tpm: int | None = None

    def __repr__(self) -> str:  # the key stays out of every repr, log and error
        return f"Provider(name={self.name!r}, base_url={mask_url(self.base_url)!r}, models={self.models!r})"

    def url_for(self, endpoint: str) -> str:
        # A line's url '/v1/chat/completions' goes to '{base}/chat/completions'.
        return self.base_url + endpoint.removeprefix("/v1")


class _ProviderEntry(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    base_url: str
    api_key_env: str | None = None
    models: list[str] | None = None
    concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None


class _ConfigFile(msgspec.Struct, forbid_unknown_fields=True):
    providers: list[_ProviderEntry]


def load_providers(settings: Settings, env: Mapping[str, str] | None = None, *, keys: bool = True) -> list[Provider]:
    """The providers the settings name. keys=False leaves their keys unread (api_key None): for a
    process that only needs to know which models they serve."""
    env = os.environ if env is None else env
    providers: list[Provider] = []
    if settings.config_path is not None:
        where = f"EVENTBATCH_CONFIG {str(settings.config_path)!r}"
        try:
            raw = tomllib.loads(settings.config_path.read_text())
            config = msgspec.convert(raw, _ConfigFile)
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{where}: cannot read it ({exc}); check the path.") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{where}: not valid TOML ({exc}); fix the file.") from None
        except msgspec.ValidationError as exc:
            raise SettingsError(f"{where}: {exc}; each [[providers]] entry takes name, base_url, "
                                "api_key_env, models, concurrency, rpm, tpm.") from None
        names = set()
        for p in config.providers:
            if p.name in names:
                raise SettingsError(f"{where}: provider name {p.name!r} is used twice; names must be unique.")
            names.add(p.name)
            key = None
            if p.api_key_env and keys:
                key = env.get(p.api_key_env)
                if not key:
                    raise SettingsError(f"{where}: provider {p.name!r} reads its key from ${p.api_key_env}, "
                                        "which is not set; export it or remove api_key_env.")
            concurrency = p.concurrency if p.concurrency is not None else settings.upstream_concurrency
            if not 1 <= concurrency <= 10_000:
                raise SettingsError(f"{where}: provider {p.name!r} concurrency must be between 1 and 10000.")
            for limit, value in (("rpm", p.rpm), ("tpm", p.tpm)):
                if value is not None and not 1 <= value <= 1_000_000_000:
                    raise SettingsError(f"{where}: provider {p.name!r} {limit} must be a whole number from 1 to "
                                        "1000000000; leave it out for no limit.")
            providers.append(Provider(name=p.name, base_url=check_upstream_url(
                                          f"{where}: provider {p.name!r} base_url", p.base_url,
                                          with_key=bool(p.api_key_env)), api_key=key,
                                      models=p.models, concurrency=concurrency, rpm=p.rpm, tpm=p.tpm))
    if settings.upstream_url is not None:
        providers.append(Provider(name="default", base_url=settings.upstream_url, api_key=settings.upstream_api_key,
                                  concurrency=settings.upstream_concurrency))
    if not providers:
        raise SettingsError("no upstream provider is configured; set EVENTBATCH_UPSTREAM_URL (and "
                            "EVENTBATCH_UPSTREAM_API_KEY) or EVENTBATCH_CONFIG.")
    return providers


def provider_for(providers: list[Provider], model: str | None) -> Provider | None:
    """The first provider that names the model, else the first that serves every model."""
    for p in providers:
        if p.models is not None and model in p.models:
            return p
    for p in providers:
        if p.models is None:
            return p
    return None


def model_check(providers: list[Provider]) -> Callable[[str], bool] | None:
    """What validation asks of a file's model (the Validator's serves_model): whether
    provider_for would find a provider for it. None when one serves every model: nothing is refused."""
    if any(p.models is None for p in providers):
        return None
    served = frozenset(m for p in providers for m in p.models or ())
    return served.__contains__


def configured_model_check(settings: Settings) -> Callable[[str], bool] | None:
    """model_check of the providers the settings name, for the API process: it validates files
    but never calls a provider, so their keys are not read. None when no provider is configured
    in this process (an api-only process may run without): then no model is refused here."""
    if settings.config_path is None and settings.upstream_url is None:
        return None
    return model_check(load_providers(settings, keys=False))


class Route(msgspec.Struct, frozen=True):
    """Which batches a claim for one provider takes, by model, as provider_for routes them:
    the models it is the first to name, and (catch_all) every model no provider names."""
    models: list[str]
    catch_all: bool
    named: list[str]


def route_of(providers: list[Provider], provider: Provider) -> Route:
    """provider_for as a claim filter. Without a provider that serves every model, the first
    provider takes the models nobody serves: they are claimed, and fail with a clear error, rather
    than waiting in the queue until they expire."""
    named = sorted({m for p in providers for m in p.models or ()})
    mine = [m for m in provider.models or ()
            if next(p for p in providers if p.models and m in p.models).name == provider.name]
    catch_all = next((p for p in providers if p.models is None), providers[0]).name == provider.name
    return Route(models=mine, catch_all=catch_all, named=named)
