"""A fake OpenAI-compatible provider: a real HTTP server for tests, demos and benchmarks.

Answers are deterministic functions of the request body (`answers`), so tests can predict
content and usage. Faults (`faults`) come from the settings (random, seedable) or from a
`"mock"` object in the request body, which wins over the random faults:

    {"mock": {"status": 400}}               always answer 400 with an OpenAI error body
    {"mock": {"status": 503, "times": 2}}   503 for the first 2 sightings of this exact body, then normal
    {"mock": {"latency_ms": 500}}           extra delay for this request
    {"mock": {"hang": true}}                never answer; held until the client goes away
    {"mock": {"status": 429, "retry_after_ms": 1500}}   429 with a chosen retry delay

`GET /_mock/stats`, `GET /_mock/requests?since=T` and `POST /_mock/reset` (`control`) let tests
see what the gateway did to it (`ledger`): how many requests, which statuses, peak concurrency,
duplicates.

Benchmarks push thousands of requests a second through it, so per-request work is kept small:
msgspec for JSON, a 16-byte blake2b of the raw body, no logging.
"""

from .ledger import MockLedger
from .server import MockListenError, MockServer, StartedMock, create_control_app, create_mock_app, run_mock, start_mock
from .settings import MockSettings

__all__ = ["MockLedger", "MockListenError", "MockServer", "MockSettings", "StartedMock", "create_control_app",
           "create_mock_app", "run_mock", "start_mock"]
