"""The mock upstream over real loopback HTTP: shapes, usage, faults, and what it tells tests."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from eventbatch.mock_upstream import MockSettings, start_mock


@contextlib.asynccontextmanager
async def mock_upstream(**settings):
    runner, base_url = await start_mock(MockSettings(**settings))
    try:
        async with aiohttp.ClientSession() as session:
            yield session, base_url
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_mock(**settings):
    """The mock and a session, for tests that use its control site (`server.control_url`)."""
    server, _ = await start_mock(MockSettings(**settings))
    try:
        async with aiohttp.ClientSession() as session:
            yield session, server
    finally:
        await server.cleanup()


async def configure(session, server, **changes):
    async with session.post(server.control_url + "/_mock/config", json=changes) as r:
        return r.status, await r.json()


def root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


async def post(session, url, body=None, *, data=None, headers=None):
    async with session.post(url, json=body if data is None else None, data=data, headers=headers) as r:
        return r.status, r.headers, await r.json()


async def stats(session, base_url):
    async with session.get(root(base_url) + "/_mock/stats") as r:
        return await r.json()


def assert_error_envelope(body, type_):
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type_
    assert error["message"]


@pytest.mark.asyncio
async def test_chat_completion_is_deterministic_and_has_usage():
    async with mock_upstream() as (session, base):
        body = {"model": "gpt-4o-mini", "max_tokens": 5,
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]}
        status, headers, answer = await post(session, base + "/chat/completions", body)
        assert status == 200
        assert headers["x-request-id"].startswith("req_")
        assert answer["id"].startswith("chatcmpl-")
        assert answer["object"] == "chat.completion"
        assert answer["model"] == "gpt-4o-mini"
        assert answer["choices"][0]["message"]["content"] == "echo: hello there"
        assert answer["usage"]["prompt_tokens"] == (len("be brief") + len("hello there")) // 4 + 1
        assert answer["usage"]["completion_tokens"] == 5
        assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + 5
        _, again_headers, again = await post(session, base + "/chat/completions", body)
        assert again["choices"] == answer["choices"] and again["usage"] == answer["usage"]
        assert again["id"] != answer["id"] and again_headers["x-request-id"] != headers["x-request-id"]


@pytest.mark.asyncio
async def test_a_message_nested_deep_is_still_answered():
    # what the gateway's validator accepts (msgspec follows ~1,000 levels), the mock answers:
    # its text walk was recursive and answered 500 past ~500 levels, which the gateway retried
    deep: object = "deep"
    for _ in range(900):
        deep = [deep]
    async with mock_upstream() as (session, base):
        status, _, answer = await post(session, base + "/chat/completions",
                                       {"model": "m1", "messages": [{"role": "user", "content": deep}]})
        assert status == 200 and answer["choices"][0]["message"]["content"] == "echo: deep"


@pytest.mark.asyncio
async def test_completions_embeddings_responses_moderations_models():
    async with mock_upstream() as (session, base):
        status, _, answer = await post(session, base + "/completions", {"model": "m1", "prompt": "abcdefgh"})
        assert status == 200 and answer["id"].startswith("cmpl-") and answer["model"] == "m1"
        assert answer["choices"][0]["text"] == "echo: abcdefgh"
        assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}

        status, _, answer = await post(session, base + "/embeddings",
                                       {"model": "text-embedding-3-small", "input": ["a", "bb", "a"]})
        assert status == 200 and answer["object"] == "list"
        assert [d["index"] for d in answer["data"]] == [0, 1, 2]
        vectors = [d["embedding"] for d in answer["data"]]
        assert all(len(v) == 8 and all(-1.0 <= x <= 1.0 for x in v) for v in vectors)
        assert vectors[0] == vectors[2] != vectors[1]
        assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
        _, _, single = await post(session, base + "/embeddings", {"model": "e", "input": "a"})
        assert len(single["data"]) == 1 and single["data"][0]["embedding"] == vectors[0]

        status, _, answer = await post(session, base + "/responses",
                                       {"model": "gpt-4.1-mini", "input": "say hi", "max_output_tokens": 3})
        assert status == 200 and answer["id"].startswith("resp_") and answer["object"] == "response"
        assert answer["status"] == "completed" and answer["model"] == "gpt-4.1-mini"
        (message,) = answer["output"]
        assert message["type"] == "message" and message["content"][0]["text"] == "echo: say hi"
        assert answer["usage"] == {"input_tokens": 2, "input_tokens_details": {"cached_tokens": 0},
                                   "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
                                   "total_tokens": 5}

        status, _, answer = await post(session, base + "/moderations",
                                       {"model": "omni-moderation-latest", "input": ["x", "y"]})
        assert status == 200 and answer["id"].startswith("modr-")
        assert [r["flagged"] for r in answer["results"]] == [False, False]

        async with session.get(base + "/models") as r:
            models = await r.json()
            assert r.status == 200 and r.headers["x-request-id"].startswith("req_")
        assert models["object"] == "list" and all(m["object"] == "model" for m in models["data"])

        status, _, answer = await post(session, base + "/no/such/route", {"model": "m"})
        assert status == 404
        assert_error_envelope(answer, "invalid_request_error")


@pytest.mark.asyncio
async def test_malformed_json_and_missing_model_are_400():
    async with mock_upstream() as (session, base):
        status, headers, answer = await post(session, base + "/chat/completions", data=b"{not json",
                                             headers={"Content-Type": "application/json"})
        assert status == 400 and headers["x-request-id"].startswith("req_")
        assert_error_envelope(answer, "invalid_request_error")
        assert answer["error"]["param"] is None and answer["error"]["code"] is None
        status, _, answer = await post(session, base + "/chat/completions", {"messages": []})
        assert status == 400
        assert_error_envelope(answer, "invalid_request_error")
        assert (await stats(session, base))["by_status"] == {"400": 2}


@pytest.mark.asyncio
async def test_mock_status_is_always_answered():
    async with mock_upstream() as (session, base):
        body = {"model": "m", "messages": [], "mock": {"status": 400}}
        for _ in range(3):
            status, _, answer = await post(session, base + "/chat/completions", body)
            assert status == 400
            assert_error_envelope(answer, "invalid_request_error")
            assert "400" in answer["error"]["message"]
        status, _, answer = await post(session, base + "/chat/completions", {**body, "mock": {"status": 500}})
        assert status == 500
        assert_error_envelope(answer, "server_error")


@pytest.mark.asyncio
async def test_mock_times_fails_the_same_body_then_succeeds():
    async with mock_upstream() as (session, base):
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "mock": {"status": 503, "times": 2}}
        statuses = [(await post(session, base + "/chat/completions", body))[0] for _ in range(4)]
        assert statuses == [503, 503, 200, 200]
        # A different body has its own count.
        other = {**body, "messages": [{"role": "user", "content": "y"}]}
        assert (await post(session, base + "/chat/completions", other))[0] == 503
        s = await stats(session, base)
        assert s["by_status"] == {"200": 2, "503": 3}
        assert s["successes"] == 2 and s["duplicate_successes"] == 1


@pytest.mark.asyncio
async def test_seeded_fault_rates_roughly_match():
    async with mock_upstream(fail_rate=0.1, rate_limit_rate=0.2, seed=7) as (session, base):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        sem = asyncio.Semaphore(32)

        async def one():
            async with sem:
                return (await post(session, base + "/chat/completions", body))[0]

        statuses = await asyncio.gather(*(one() for _ in range(2000)))
        limited = statuses.count(429)
        failed = sum(statuses.count(s) for s in (500, 502, 503))
        assert 300 <= limited <= 500  # expected 400
        assert 120 <= failed <= 280  # expected 200
        assert all(statuses.count(s) > 0 for s in (500, 502, 503))
        assert statuses.count(200) == 2000 - limited - failed
        s = await stats(session, base)
        assert s["requests"] == 2000 and s["successes"] == statuses.count(200)


@pytest.mark.asyncio
async def test_same_seed_gives_the_same_fault_sequence():
    async def sequence():
        async with mock_upstream(fail_rate=0.3, rate_limit_rate=0.3, seed=11) as (session, base):
            return [(await post(session, base + "/completions", {"model": "m", "prompt": "p"}))[0]
                    for _ in range(40)]

    assert await sequence() == await sequence()


@pytest.mark.asyncio
async def test_rate_limit_carries_both_retry_headers():
    async with mock_upstream(rate_limit_rate=1.0, retry_after_ms=1500) as (session, base):
        status, headers, answer = await post(session, base + "/chat/completions", {"model": "m", "messages": []})
        assert status == 429
        assert headers["retry-after-ms"] == "1500" and headers["Retry-After"] == "2"
        assert_error_envelope(answer, "rate_limit_error")
        assert answer["error"]["code"] == "rate_limit_exceeded"
        # The default 20 ms still gives a whole-second Retry-After of at least 1.
    async with mock_upstream(rate_limit_rate=1.0) as (session, base):
        _, headers, _ = await post(session, base + "/embeddings", {"model": "m", "input": "a"})
        assert headers["retry-after-ms"] == "20" and headers["Retry-After"] == "1"
        # The body's `mock` wins over random faults.
        status, _, _ = await post(session, base + "/embeddings", {"model": "m", "input": "a", "mock": {}})
        assert status == 200


@pytest.mark.asyncio
async def test_max_in_flight_reflects_concurrency():
    async with mock_upstream(latency_ms=100) as (session, base):
        started = time.monotonic()
        statuses = await asyncio.gather(*(
            post(session, base + "/chat/completions", {"model": "m", "messages": [], "n": i}) for i in range(20)))
        assert all(s == 200 for s, _, _ in statuses)
        assert time.monotonic() - started < 1.5  # concurrent, not one after another
        s = await stats(session, base)
        assert 10 <= s["max_in_flight"] <= 20
        assert s["in_flight"] == 0 and s["requests"] == 20


@pytest.mark.asyncio
async def test_mock_latency_delays_one_request():
    async with mock_upstream() as (session, base):
        started = time.monotonic()
        status, _, _ = await post(session, base + "/chat/completions",
                                  {"model": "m", "messages": [], "mock": {"latency_ms": 200}})
        assert status == 200 and time.monotonic() - started >= 0.19


@pytest.mark.asyncio
async def test_hang_never_answers_and_is_released_when_the_client_leaves():
    async with mock_upstream() as (session, base):
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(base + "/chat/completions", json={"model": "m", "mock": {"hang": True}},
                                    timeout=aiohttp.ClientTimeout(total=0.3)) as r:
                await r.read()
        for _ in range(40):
            s = await stats(session, base)
            if s["in_flight"] == 0:
                break
            await asyncio.sleep(0.05)
        assert s["in_flight"] == 0 and s["requests"] == 1 and s["by_status"] == {}


@pytest.mark.asyncio
async def test_hang_ends_when_the_server_stops():
    runner, base = await start_mock(MockSettings())
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(session.post(base + "/chat/completions",
                                                     json={"model": "m", "mock": {"hang": True}}))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - started < 1.5
        with contextlib.suppress(aiohttp.ClientError):
            (await pending).release()


@pytest.mark.asyncio
async def test_duplicate_successes_count_a_repeated_body():
    async with mock_upstream() as (session, base):
        body = {"model": "m", "messages": [{"role": "user", "content": "same"}]}
        for _ in range(3):
            await post(session, base + "/chat/completions", body)
        await post(session, base + "/chat/completions", {**body, "messages": []})
        s = await stats(session, base)
        assert s["successes"] == 4 and s["duplicate_successes"] == 2


@pytest.mark.asyncio
async def test_api_key_enforced_and_authorization_recorded():
    async with mock_upstream(api_key="sk-right") as (session, base):
        url = base + "/chat/completions"
        body = {"model": "m", "messages": []}
        status, _, answer = await post(session, url, body)
        assert status == 401
        assert_error_envelope(answer, "invalid_request_error")
        assert (await post(session, url, body, headers={"Authorization": "Bearer sk-wrong"}))[0] == 401
        assert (await post(session, url, body, headers={"Authorization": "Bearer sk-right"}))[0] == 200
        s = await stats(session, base)
        assert s["authorization_seen"] == ["Bearer sk-right", "Bearer sk-wrong"]
        assert s["by_status"] == {"200": 1, "401": 2}


@pytest.mark.asyncio
async def test_stats_request_log_and_reset():
    async with mock_upstream() as (session, base):
        before = time.time()
        s = await stats(session, base)
        assert s["requests"] == 0 and s["first_request_at"] is None and s["last_request_started_at"] is None
        await post(session, base + "/chat/completions", {"model": "m", "messages": []})
        await post(session, base + "/embeddings", {"model": "m", "input": "a", "mock": {"status": 422}})
        s = await stats(session, base)
        assert s["requests"] == 2
        assert before <= s["first_request_at"] <= s["last_request_started_at"] <= time.time()

        async with session.get(root(base) + "/_mock/requests", params={"since": str(before)}) as r:
            rows = (await r.json())["data"]
        assert [(row["path"], row["status"]) for row in rows] == [("/v1/chat/completions", 200),
                                                                  ("/v1/embeddings", 422)]
        assert all(len(row["body_sha"]) == 32 and row["started_at"] >= before for row in rows)
        async with session.get(root(base) + "/_mock/requests", params={"since": str(time.time() + 60)}) as r:
            assert (await r.json())["data"] == []

        async with session.post(root(base) + "/_mock/reset") as r:
            assert r.status == 200
        s = await stats(session, base)
        assert s.pop("config")["latency_ms"] == 0.0
        assert s == {"requests": 0, "by_status": {}, "in_flight": 0, "max_in_flight": 0, "successes": 0,
                     "duplicate_successes": 0, "authorization_seen": [], "dropped_connections": 0,
                     "first_request_at": None,
                     "last_request_started_at": None}
        async with session.get(root(base) + "/_mock/requests") as r:
            assert (await r.json())["data"] == []


@pytest.mark.asyncio
async def test_control_site_shares_the_state_and_config_changes_a_running_mock():
    async with running_mock(api_key="sk-secret") as (session, server):
        assert server.control_port not in (0, server.port)
        auth = {"Authorization": "Bearer sk-secret"}
        body = {"model": "m", "messages": []}
        assert (await post(session, server.base_url + "/chat/completions", body, headers=auth))[0] == 200
        async with session.get(server.control_url + "/_mock/stats") as r:
            s = await r.json()
        assert s["requests"] == 1 and s["by_status"] == {"200": 1}
        assert s["config"]["api_key"] == "(set)" and "sk-secret" not in str(s["config"])
        # The control site answers only /_mock.
        async with session.post(server.control_url + "/v1/chat/completions", json=body) as r:
            assert r.status == 404

        status, config = await configure(session, server, latency_ms=150, api_key=None)
        assert status == 200 and config["latency_ms"] == 150 and config["api_key"] is None
        started = time.monotonic()
        assert (await post(session, server.base_url + "/chat/completions", body))[0] == 200
        assert time.monotonic() - started >= 0.14

        for bad in ({"no_such_setting": 1}, {"fail_rate": 2}, {"latency_ms": "slow"}):
            status, answer = await configure(session, server, **bad)
            assert status == 400, bad
            assert_error_envelope(answer, "invalid_request_error")
        assert "latency_ms" in (await configure(session, server, no_such_setting=1))[1]["error"]["message"]
        async with session.get(server.control_url + "/_mock/config") as r:
            config = await r.json()
        assert config["fail_rate"] == 0.0 and config["latency_ms"] == 150


def test_a_port_in_use_is_one_line_and_exit_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag in ("--port", "--control-port"):
            args = ["--port", "0", "--control-port", str(port)] if flag == "--control-port" else ["--port", str(port)]
            done = subprocess.run([sys.executable, "-m", "eventbatch", "mock-upstream", *args],
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 2, done.stderr
            assert done.stderr == (f"eventbatch: error: cannot listen on 127.0.0.1:{port} "
                                   f"({os.strerror(errno.EADDRINUSE)}); choose another {flag}.\n")
            assert "Traceback" not in done.stdout


def test_a_bad_setting_on_the_command_line_names_the_flag():
    done = subprocess.run([sys.executable, "-m", "eventbatch", "mock-upstream", "--port", "0",
                           "--fail-rate", "1.5"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == "eventbatch: error: --fail-rate must be between 0 and 1; got 1.5.\n"


@contextlib.contextmanager
def spawned_mock(*args: str):
    """`python -m eventbatch mock-upstream --port 0 ARGS` as a process; yields its two URLs."""
    proc = subprocess.Popen([sys.executable, "-m", "eventbatch", "mock-upstream", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        listening = proc.stdout.readline()
        control = proc.stdout.readline()
        assert listening.startswith("mock-upstream listening on http://127.0.0.1:"), proc.stderr.read()
        assert control.startswith("mock-upstream control on http://127.0.0.1:")
        yield listening.split()[-1], control.split()[3].removesuffix("/_mock")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.asyncio
async def test_fixed_retry_after_on_every_429_and_changed_at_runtime():
    async with running_mock(rate_limit_rate=1.0, retry_after_ms=3000) as (session, server):
        url = server.base_url + "/chat/completions"
        for body in ({"model": "m", "messages": []},  # a random 429
                     {"model": "m", "messages": [], "mock": {"status": 429}}):  # a requested one
            status, headers, answer = await post(session, url, body)
            assert status == 429 and headers["Retry-After"] == "3" and headers["retry-after-ms"] == "3000"
            assert_error_envelope(answer, "rate_limit_error")
        assert (await configure(session, server, retry_after=1.5))[1]["retry_after_ms"] == 1500
        _, headers, _ = await post(session, url, {"model": "m", "messages": []})
        assert headers["Retry-After"] == "2" and headers["retry-after-ms"] == "1500"
        await configure(session, server, retry_after_ms=0)
        _, headers, _ = await post(session, url, {"model": "m", "messages": []})
        assert headers["Retry-After"] == "0" and headers["retry-after-ms"] == "0"
        await configure(session, server, retry_after=None)
        status, headers, _ = await post(session, url, {"model": "m", "messages": []})
        assert status == 429 and "Retry-After" not in headers and "retry-after-ms" not in headers


@pytest.mark.asyncio
async def test_retry_after_flags_of_the_command():
    async with aiohttp.ClientSession() as session:
        for args, seconds, ms in ((["--retry-after", "2"], "2", "2000"),
                                  (["--retry-after-ms", "2500"], "3", "2500")):
            with spawned_mock("--rate-limit-rate", "1", *args) as (base, control):
                status, headers, _ = await post(session, base + "/embeddings", {"model": "m", "input": "a"})
                assert status == 429 and (headers["Retry-After"], headers["retry-after-ms"]) == (seconds, ms)
                async with session.get(control + "/_mock/stats") as r:
                    assert (await r.json())["config"]["retry_after_ms"] == int(ms)
        with spawned_mock("--rate-limit-rate", "1", "--no-retry-after") as (base, _):
            _, headers, _ = await post(session, base + "/embeddings", {"model": "m", "input": "a"})
            assert "Retry-After" not in headers and "retry-after-ms" not in headers


@pytest.mark.asyncio
async def test_attempts_per_body_show_retries_sooner_than_retry_after():
    async with running_mock() as (session, server):
        url = server.base_url + "/chat/completions"
        limited = {"model": "m", "messages": [], "mock": {"status": 429, "retry_after_ms": 300, "times": 2}}
        before = time.time()
        assert (await post(session, url, limited))[0] == 429
        assert (await post(session, url, limited))[0] == 429  # at once: sooner than 300 ms allowed
        await asyncio.sleep(0.35)
        assert (await post(session, url, limited))[0] == 200  # waited: not early
        await post(session, url, {"model": "m", "messages": []})

        async with session.get(server.control_url + "/_mock/requests", params={"since": str(before)}) as r:
            rows = (await r.json())["data"]
        assert [(row["status"], row["retry_after_ms"]) for row in rows] == [(429, 300), (429, 300), (200, None),
                                                                            (200, None)]
        assert all(before <= row["started_at"] <= row["answered_at"] <= time.time() for row in rows)

        async with session.get(server.control_url + "/_mock/attempts") as r:
            attempts = await r.json()
        assert attempts["bodies"] == 2 and attempts["max_attempts"] == 3 and attempts["early_retries"] == 1
        (one,) = [d for d in attempts["data"] if len(d["attempts"]) == 3]
        assert one["early_retries"] == 1 and one["body_sha"] == rows[0]["body_sha"]
        assert [a["status"] for a in one["attempts"]] == [429, 429, 200]
        gaps = [b["started_at"] - a["answered_at"] for a, b in zip(one["attempts"], one["attempts"][1:])]
        assert gaps[0] < 0.3 <= gaps[1]
        async with session.get(server.control_url + "/_mock/attempts",
                               params={"body_sha": rows[-1]["body_sha"]}) as r:
            assert [d["body_sha"] for d in (await r.json())["data"]] == [rows[-1]["body_sha"]]


@pytest.mark.asyncio
async def test_max_in_flight_answers_429_only_above_n():
    async with running_mock(max_in_flight=3, latency_ms=300, retry_after_ms=700) as (session, server):
        url = server.base_url + "/chat/completions"

        async def one(i):
            started = time.monotonic()
            status, headers, answer = await post(session, url, {"model": "m", "messages": [], "n": i})
            return status, headers, answer, time.monotonic() - started

        results = await asyncio.gather(*(one(i) for i in range(10)))
        served = [r for r in results if r[0] == 200]
        limited = [r for r in results if r[0] == 429]
        assert len(served) == 3 and len(limited) == 7
        assert all(elapsed >= 0.29 for *_, elapsed in served)
        assert all(elapsed < 0.25 for *_, elapsed in limited)  # at once, not after the latency
        for _, headers, answer, _ in limited:
            assert headers["retry-after-ms"] == "700" and headers["Retry-After"] == "1"
            assert_error_envelope(answer, "rate_limit_error")
            assert answer["error"]["code"] == "rate_limit_exceeded"
        # N at once is within the limit, whatever came before.
        assert [r[0] for r in await asyncio.gather(*(one(i) for i in range(3)))] == [200] * 3
        # Changed on the running mock.
        await configure(session, server, max_in_flight=5, latency_ms=200)
        assert sorted(r[0] for r in await asyncio.gather(*(one(i) for i in range(7)))) == [200] * 5 + [429] * 2
        await configure(session, server, max_in_flight=None)
        assert [r[0] for r in await asyncio.gather(*(one(i) for i in range(12)))] == [200] * 12


@pytest.mark.asyncio
async def test_rate_limit_for_answers_everything_429_for_the_window():
    async with running_mock(rate_limit_after=0.3, rate_limit_seconds=0.5, retry_after_ms=100) as (session, server):
        url = server.base_url + "/embeddings"
        marked = {"model": "m", "input": "a", "mock": {"status": 500}}
        assert (await post(session, url, {"model": "m", "input": "a"}))[0] == 200
        async with session.get(server.control_url + "/_mock/stats") as r:
            window = (await r.json())["config"]["rate_limit_window"]
        assert window["active"] is False and window["ends_at"] - window["starts_at"] == pytest.approx(0.5)
        await asyncio.sleep(0.35)
        status, headers, _ = await post(session, url, {"model": "m", "input": "a"})
        assert status == 429 and headers["retry-after-ms"] == "100"
        assert (await post(session, url, marked))[0] == 429  # the provider's state wins over a mark
        await asyncio.sleep(0.5)
        assert (await post(session, url, {"model": "m", "input": "a"}))[0] == 200
        assert (await post(session, url, marked))[0] == 500

        # From now, via the control site; and ended early.
        status, config = await configure(session, server, rate_limit_seconds=20)
        assert status == 200 and config["rate_limit_window"]["active"] is True
        assert config["rate_limit_window"]["ends_at"] == pytest.approx(time.time() + 20, abs=1)
        assert [(await post(session, url, {"model": "m", "input": str(i)}))[0] for i in range(5)] == [429] * 5
        _, config = await configure(session, server, rate_limit_seconds=0)
        assert config["rate_limit_window"]["active"] is False
        assert (await post(session, url, {"model": "m", "input": "a"}))[0] == 200


@pytest.mark.asyncio
async def test_a_marked_request_is_answered_500_every_time_among_good_ones():
    async with running_mock() as (session, server):
        url = server.base_url + "/chat/completions"
        marked = {"model": "m", "messages": [{"role": "user", "content": "doomed"}], "mock": {"status": 500}}
        for i in range(10):
            status, _, answer = await post(session, url, marked)
            assert status == 500
            assert_error_envelope(answer, "server_error")
            assert (await post(session, url, {"model": "m", "messages": [], "n": i}))[0] == 200
        async with session.get(server.control_url + "/_mock/attempts") as r:
            attempts = await r.json()
        (doomed,) = [d for d in attempts["data"] if len(d["attempts"]) == 10]
        assert {a["status"] for a in doomed["attempts"]} == {500}


@pytest.mark.asyncio
async def test_fault_flags_of_the_command():
    async with aiohttp.ClientSession() as session:
        body = {"model": "m", "input": "a"}
        with spawned_mock("--max-in-flight", "0", "--retry-after", "4") as (base, control):
            status, headers, _ = await post(session, base + "/embeddings", body)
            assert status == 429 and headers["Retry-After"] == "4"
            async with session.get(control + "/_mock/config") as r:
                assert (await r.json())["max_in_flight"] == 0
        with spawned_mock("--rate-limit-for", "30") as (base, control):
            assert (await post(session, base + "/embeddings", body))[0] == 429
            async with session.post(control + "/_mock/config", json={"rate_limit_seconds": 0}) as r:
                assert r.status == 200
            assert (await post(session, base + "/embeddings", body))[0] == 200


async def refused(session, url) -> bool:
    """Does a fresh connection to `url` get ECONNREFUSED?"""
    try:
        async with aiohttp.ClientSession() as fresh, fresh.get(url) as r:
            await r.read()
    except aiohttp.ClientConnectorError as exc:
        return isinstance(exc.os_error, ConnectionRefusedError)
    return False


@pytest.mark.asyncio
async def test_outage_refuses_connections_drops_open_ones_then_recovers():
    async with running_mock(latency_ms=0) as (session, server):
        url = server.base_url + "/chat/completions"
        body = {"model": "m", "messages": []}
        idle = aiohttp.ClientSession()
        assert (await post(idle, url, body))[0] == 200  # leaves a keep-alive connection in its pool
        in_flight = asyncio.ensure_future(post(session, url, {**body, "mock": {"latency_ms": 500}}))
        await asyncio.sleep(0.2)

        status, config = await configure(session, server, outage_seconds=0.8)
        assert status == 200 and config["outage_window"]["active"] is True
        await asyncio.sleep(0.1)
        with pytest.raises(aiohttp.ClientConnectionError):  # cut, not answered
            await in_flight
        assert await refused(session, server.base_url + "/models")
        with pytest.raises(aiohttp.ClientConnectionError):  # the idle keep-alive one was dropped too
            await post(idle, url, body)
        await idle.close()
        # The control site stays up and tells.
        async with session.get(server.control_url + "/_mock/stats") as r:
            s = await r.json()
        assert s["config"]["outage_window"]["active"] is True and s["dropped_connections"] == 2

        await asyncio.sleep(0.9)
        assert (await post(session, url, body))[0] == 200  # the same port, listening again
        async with session.get(server.control_url + "/_mock/stats") as r:
            s = await r.json()
        assert s["config"]["outage_window"]["active"] is False
        async with session.get(server.control_url + "/_mock/requests") as r:
            statuses = [row["status"] for row in (await r.json())["data"]]
        assert statuses == [200, 499, 200]  # the cut request is marked: its client never got an answer

        # Ended early from the control site.
        await configure(session, server, outage_seconds=60)
        await asyncio.sleep(0.1)
        assert await refused(session, server.base_url + "/models")
        _, config = await configure(session, server, outage_seconds=0)
        assert config["outage_window"]["active"] is False
        for _ in range(20):
            if not await refused(session, server.base_url + "/models"):
                break
            await asyncio.sleep(0.05)
        assert (await post(session, url, body))[0] == 200


@pytest.mark.asyncio
async def test_outage_window_from_start_on_the_command_line():
    async with aiohttp.ClientSession() as session:
        with spawned_mock("--outage-after", "0.5", "--outage-seconds", "1") as (base, control):
            started = time.monotonic()
            assert (await post(session, base + "/embeddings", {"model": "m", "input": "a"}))[0] == 200
            await asyncio.sleep(max(0.0, 0.7 - (time.monotonic() - started)))
            assert await refused(session, base + "/models")
            async with session.get(control + "/_mock/stats") as r:
                assert (await r.json())["config"]["outage_window"]["active"] is True
            await asyncio.sleep(max(0.0, 1.7 - (time.monotonic() - started)))
            async with aiohttp.ClientSession() as fresh:
                assert (await post(fresh, base + "/embeddings", {"model": "m", "input": "a"}))[0] == 200


@pytest.mark.asyncio
async def test_an_outage_needs_a_served_mock():
    from aiohttp.test_utils import TestClient, TestServer

    from eventbatch.mock_upstream import create_mock_app
    async with TestClient(TestServer(create_mock_app(MockSettings()))) as client:
        r = await client.post("/_mock/config", json={"outage_seconds": 5})
        assert r.status == 400
        assert "start_mock" in (await r.json())["error"]["message"]
