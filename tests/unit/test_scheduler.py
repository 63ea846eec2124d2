"""The scheduler's rules without a network: what counts as an attempt, when a provider is
paused, how its concurrency adapts (worker/scheduler.py)."""

from __future__ import annotations

import asyncio

from eventbatch import events as ev
from eventbatch.worker import upstream
from eventbatch.worker.providers import Provider
from eventbatch.worker.scheduler import PAUSE_AFTER, Backoff, ProviderScheduler, RetryState


def _scheduler(concurrency: int = 64, max_attempts: int = 10) -> ProviderScheduler:
    return ProviderScheduler(Provider(name="p", base_url="http://127.0.0.1:9/v1", concurrency=concurrency),
                             lambda: None, max_attempts=max_attempts, backoff=Backoff(0.01, 0.02), timeout=1.0)


def _answer(kind: str, status: int | None = None, retry_after: float | None = None) -> upstream.Answer:
    return upstream.Answer(kind, ev.Attempt(at=0.0, duration_ms=1, status_code=status), status, b"{}",
                           retry_after=retry_after)


def test_a_request_failing_alone_never_pauses_its_provider_and_spends_its_attempts():
    async def go():
        s = _scheduler(max_attempts=5)
        state = RetryState()
        done = [s._after(("b", 7), _answer(upstream.TRANSIENT, 500), 0, state) for _ in range(5)]
        assert done == [False, False, False, False, True] and state.counted == 5
        assert not s.paused
        await s.close()
    asyncio.run(go())


def test_different_requests_failing_in_a_row_pause_it_and_spend_nothing_meanwhile():
    async def go():
        s = _scheduler()
        states = [RetryState() for _ in range(PAUSE_AFTER + 3)]
        for i, st in enumerate(states):
            assert not s._after(("b", i), _answer(upstream.TRANSIENT), 0, st)
        assert s.paused
        # the failures before the pause counted once each; the one that showed the outage and
        # those after it did not
        assert [st.counted for st in states] == [1] * (PAUSE_AFTER - 1) + [0] * 4
        await s.close()
    asyncio.run(go())


def test_an_answer_between_failures_keeps_it_open():
    async def go():
        s = _scheduler()
        for i in range(5 * PAUSE_AFTER):
            kind = upstream.OK if i % (PAUSE_AFTER - 1) == 0 else upstream.TRANSIENT
            s._after(("b", i), _answer(kind, 200 if kind == upstream.OK else 503), 0, RetryState())
        assert not s.paused
        await s.close()
    asyncio.run(go())


def test_429s_spend_no_attempt_cut_the_concurrency_and_successes_grow_it_back():
    async def go():
        s = _scheduler(concurrency=64, max_attempts=1)
        state = RetryState()
        assert not s._after(("b", 1), _answer(upstream.RATE_LIMITED, 429, retry_after=2.0), 0, state)
        assert state.counted == 0 and state.next_at > 0
        assert s.slots.limit == 57          # 64 * 0.9
        # more 429s from requests sent before that cut: down to half, no further
        for i in range(20):
            s._after(("b", i), _answer(upstream.RATE_LIMITED, 429), 0, RetryState())
        assert s.slots.limit == 32
        # a 429 of a request sent after the cut starts a new cut
        s._after(("b", 99), _answer(upstream.RATE_LIMITED, 429), 1, RetryState())
        assert s.slots.limit == 28
        for i in range(2000):
            s._after(("b", i), _answer(upstream.OK, 200), 2, RetryState())
        assert s.slots.limit == 64          # additive increase, never above the configured concurrency
        await s.close()
    asyncio.run(go())


def test_a_request_is_estimated_by_its_bytes_and_the_output_it_allows():
    from eventbatch.worker.budget import OUTPUT_GUESS, estimate_tokens
    body = b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * 400 + b'"}],"max_tokens":100}'
    assert estimate_tokens(body) == len(body) // 4 + 100
    assert estimate_tokens(b'{"input":"abc","max_output_tokens":7}') == 38 // 4 + 7
    assert estimate_tokens(b'{"input":"abc"}') == 15 // 4 + OUTPUT_GUESS
    assert estimate_tokens(b"not json") == 2 + OUTPUT_GUESS
