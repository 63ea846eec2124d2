"""A fake OpenAI-compatible provider: a real HTTP server for tests, demos and benchmarks.

Answers are deterministic functions of the request body (`answers`), so tests can predict
content and usage. Faults (`faults`) come in three kinds, checked in this order:

- the provider's state, set by `MockSettings` at start or live via `POST /_mock/config`:
  an outage (`outage_after`, `outage_seconds`: the provider's listening socket is closed, so a
  connect gets ECONNREFUSED, and its open connections are dropped; `outage`), a rate-limit
  window (`rate_limit_after`, `rate_limit_seconds`: every request 429), and a limit on requests
  answered at once (`max_in_flight`: one more gets 429 at once). Every 429 carries
  `retry-after-ms: <retry_after_ms>` and `Retry-After` in whole seconds (None: neither);
- a `"mock"` object in the request body:

    {"mock": {"status": 400}}               always answer 400 with an OpenAI error body
    {"mock": {"status": 503, "times": 2}}   503 for the first 2 sightings of this exact body, then normal
    {"mock": {"latency_ms": 500}}           extra delay for this request
    {"mock": {"hang": true}}                never answer; held until the client goes away
    {"mock": {"status": 429, "retry_after_ms": 1500}}   429 with a chosen retry delay

- random faults at the settings' rates (`fail_rate`, `rate_limit_rate`, seedable), for requests
  without a `"mock"` object.

The routes under `/_mock` (`control`) let tests see what the gateway did to it (`ledger`): how
many requests, which statuses, peak concurrency, duplicates, and each body's attempts with their
arrival and answer times, so a test can assert no body was retried sooner than a 429 allowed.

Reaching the mock during an outage: it listens on two ports. The provider's port serves `/v1`
(and `/_mock`, for tests that use one port); a second, control port (`control_port`, printed at
start, `server.control_url` from `start_mock`) serves `/_mock` only. An outage closes only the
provider's socket, so the control port stays reachable to watch it and to end it.

Benchmarks push thousands of requests a second through it, so per-request work is kept small:
msgspec for JSON, a 16-byte blake2b of the raw body, no logging per request.
"""

from .ledger import MockLedger
from .listening import MockListenError
from .server import MockServer, StartedMock, create_control_app, create_mock_app, run_mock, start_mock
from .settings import MockSettings

__all__ = ["MockLedger", "MockListenError", "MockServer", "MockSettings", "StartedMock", "create_control_app",
           "create_mock_app", "run_mock", "start_mock"]
