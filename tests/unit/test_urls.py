"""URLs in settings: what asyncpg or aiohttp would fail on later is one line at start, and no
message ever shows a password (SPEC §14: user and password are masked in every message)."""

from __future__ import annotations

import pytest

from eventbatch.config import SettingsError, load_settings, mask_url
from eventbatch.worker.providers import Provider, load_providers


@pytest.mark.parametrize("url, shown", [
    ("postgresql://eb:s3cret@db:5432/eventbatch", "postgresql://eb:***@db:5432/eventbatch"),
    ("postgresql://eb:p@ss@db/x", "postgresql://eb:***@db/x"),            # an unescaped @ in the password
    ("postgresql://eb@db/x", "postgresql://eb@db/x"),                     # no password: nothing to hide
    ("postgresql://db/x?user=eb&password=s3cret&sslmode=require", "postgresql://db/x?user=eb&password=***&sslmode=require"),
    ("http://eb:s3cret@proxy:8080/v1", "http://eb:***@proxy:8080/v1"),
    ("https://api.openai.com/v1", "https://api.openai.com/v1"),
    ("postgresql://eb:s3cret@[::1/x", "postgresql://eb:***@[::1/x"),     # even one urlsplit refuses
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown


def refused(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    message = str(err.value)
    assert "\n" not in message and "s3cret" not in message
    return message


@pytest.mark.parametrize("name", ["EVENTBATCH_DATABASE_URL", "EVENTBATCH_MIGRATION_DATABASE_URL"])
def test_a_bad_database_url_is_one_line_with_the_password_masked(name):
    assert "port '99999'" in refused({name: "postgresql://eb:s3cret@127.0.0.1:99999/db"})
    assert "port 'abc'" in refused({name: "postgresql://eb:s3cret@127.0.0.1:abc/db"})
    assert "port 'x'" in refused({name: "postgresql://eb:s3cret@h1:5432,h2:x/db"})
    message = refused({name: "postgresql://eb:s3cret@127.0.0.1/db?sslmode=bogus"})
    assert "sslmode='bogus'" in message and "eb:***@127.0.0.1" in message and "verify-full" in message
    assert "not a valid URL" in refused({name: "postgresql://eb:s3cret@[::1/db"})
    assert name in refused({name: "mysql://eb:s3cret@db/x"})


def test_good_database_urls_pass():
    for url in ("postgresql://eb:pw@db:5432/x?sslmode=verify-full", "postgres://h1:5432,h2:5433/x",
                "postgresql://eb:pw@[::1]:5432/x", "postgresql:///x?host=/run/pg&port=5432"):
        assert load_settings({"EVENTBATCH_DATABASE_URL": url}).database_url == url
    s = load_settings({"EVENTBATCH_DATABASE_URL": "postgresql://app:pw@db/x",
                       "EVENTBATCH_MIGRATION_DATABASE_URL": "postgresql://owner:pw2@db/x"})
    assert s.migration_database_url == "postgresql://owner:pw2@db/x"
    assert "pw" not in repr(s)


def test_an_upstream_url_with_credentials_and_a_key_is_refused_at_start():
    """Both would be the Authorization header: aiohttp refuses every request ('Cannot combine
    AUTHORIZATION header with AUTH argument or credentials encoded in URL')."""
    message = refused({"EVENTBATCH_UPSTREAM_URL": "http://eb:s3cret@proxy/v1", "EVENTBATCH_UPSTREAM_API_KEY": "sk-1"})
    assert "EVENTBATCH_UPSTREAM_URL" in message and "eb:***@proxy" in message
    # credentials alone are HTTP basic auth, which aiohttp sends from the URL
    assert load_settings({"EVENTBATCH_UPSTREAM_URL": "http://eb:s3cret@proxy/v1"}).upstream_url == \
        "http://eb:s3cret@proxy/v1"
    assert "eb:***@" in refused({"EVENTBATCH_UPSTREAM_URL": "ftp://eb:s3cret@proxy/v1"})
    assert "eb:***@" in refused({"EVENTBATCH_UPSTREAM_URL": "http://eb:s3cret@proxy:99999/v1"})


def test_provider_base_urls_are_checked_and_masked(tmp_path):
    config = tmp_path / "providers.toml"

    def providers(base_url: str, key_env: str | None = "K"):
        config.write_text(f'[[providers]]\nname = "p"\nbase_url = "{base_url}"\n'
                          + (f'api_key_env = "{key_env}"\n' if key_env else ""))
        return load_providers(load_settings({"EVENTBATCH_CONFIG": str(config)}), {"K": "sk-1"})

    for bad in ("http://eb:s3cret@proxy/v1", "gopher://eb:s3cret@proxy/v1"):
        with pytest.raises(SettingsError) as err:
            providers(bad)
        assert "s3cret" not in str(err.value) and "eb:***@proxy" in str(err.value) and "'p'" in str(err.value)
    [p] = providers("http://eb:s3cret@proxy/v1/", key_env=None)
    assert p.base_url == "http://eb:s3cret@proxy/v1" and "s3cret" not in repr(p)
    assert "s3cret" not in repr(Provider(name="x", base_url="https://eb:s3cret@h/v1"))
