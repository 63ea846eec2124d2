"""A schema-driven fuzzer (schemathesis) against OpenAI's published Batch and Files document, on a
running server over loopback: whatever it sends, valid or not, the answer is never a 5xx.

Bounded so that it belongs in the suite: a fixed seed, a few hundred cases, well under a minute.
(The attack run that found the NUL and multipart-header 500s sent 22,244 cases; this is its
small, repeatable cousin.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402  (after the skip)
from hypothesis import strategies as st  # noqa: E402

REFERENCE = Path(__file__).resolve().parent.parent / "reference" / "openai-batch-files.openapi.json"
CASES = 300
# Bytes that hand-written validation forgets and Postgres or HTTP cannot carry: NUL, control
# characters, non-ASCII. The schema's generators produce them only rarely (32 in 22,244 cases),
# so each case has one string value spoiled with one of them, half of the time.
BAD = ["\x00", "\x01", "\x1f", "\x7f", "\u00e9", "\u2028", "\r\n", "%00"]


def spoiled(case, spoil) -> None:
    on, bad, at = spoil
    if not on:
        return
    places = [("query", k) for k, v in (case.query or {}).items() if isinstance(v, str)]
    places += [("path_parameters", k) for k in (case.path_parameters or {})]
    if isinstance(case.body, dict):
        places += [("body", k) for k, v in case.body.items() if isinstance(v, str)]
    if case.method == "GET" and case.path in ("/files", "/batches"):
        places += [("query", "after"), ("query", "purpose")]
    if not places:
        return
    where, name = places[at % len(places)]
    values = getattr(case, where)
    if values is None:
        setattr(case, where, {})
        values = getattr(case, where)
    value = str(values.get(name, ""))
    cut = at % (len(value) + 1)
    values[name] = value[:cut] + bad + value[cut:]


def test_no_fuzzed_request_gets_a_5xx(server, new_key):
    import requests

    schema = schemathesis.openapi.from_path(REFERENCE)
    cases = st.one_of(schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
                      schema.as_strategy(schemathesis.GenerationMode.NEGATIVE))
    key = new_key()
    base = server.base_url    # loopback: the document's own servers are never contacted
    session = requests.Session()
    server_errors: list[str] = []
    sent = 0
    start = time.monotonic()
    mark = len(server.log())

    @seed(20261201)
    @settings(max_examples=CASES, deadline=None, database=None, derandomize=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=cases, spoil=st.tuples(st.booleans(), st.sampled_from(BAD), st.integers(0, 10_000)))
    def fuzz(case, spoil):
        nonlocal sent
        spoiled(case, spoil)
        try:
            response = case.call(base_url=base, session=session, headers={"Authorization": f"Bearer {key}"},
                                 timeout=15)
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeError, ValueError):
            return   # bytes the client library itself refuses to send
        sent += 1
        if response.status_code >= 500:
            server_errors.append(f"{response.status_code} {case.method} {case.formatted_path} "
                                 f"query={case.query!r} body={str(case.body)[:200]!r}: {response.text[:200]}")

    fuzz()
    assert sent >= CASES // 2, f"only {sent} requests were sent"
    assert not server_errors, "\n".join(server_errors[:20])
    assert time.monotonic() - start < 60
    assert "unhandled_error" not in server.log()[mark:]
