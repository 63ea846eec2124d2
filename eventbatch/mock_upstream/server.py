"""The mock's apps, and serving them: `start_mock` for tests, `run_mock` for the CLI.

Two listening sites share one state: the provider's (`/v1` and, as before, `/_mock`) and a
control site (`/_mock` only, on `control_port`). An outage closes only the provider's socket
(`outage`), so the control site is what keeps a test in charge while the provider is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import NamedTuple

from aiohttp import web

from .control import add_control_routes
from .faults import ProviderState
from .ledger import MockLedger
from .listening import MockListenError, authority, listen
from .outage import Announce, OutageFollower
from .provider import add_provider_routes
from .settings import MockSettings
from .state import LEDGER, PROVIDER, SETTINGS, STOPPING

_SHARED_KEYS = (SETTINGS, LEDGER, STOPPING, PROVIDER)


async def _signal_stopping(app: web.Application) -> None:
    app[STOPPING].set()


def create_mock_app(settings: MockSettings) -> web.Application:
    """The provider's app: /v1 routes, and the /_mock routes for tests that use one port."""
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[SETTINGS] = settings
    app[LEDGER] = MockLedger(settings.seed)
    app[PROVIDER] = ProviderState(settings)
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_signal_stopping)
    add_provider_routes(app)
    add_control_routes(app)
    return app


def create_control_app(provider_app: web.Application) -> web.Application:
    """The /_mock routes alone, over the provider app's state."""
    app = web.Application()
    for key in _SHARED_KEYS:
        app[key] = provider_app[key]
    add_control_routes(app)
    return app


class MockServer:
    """The running mock: its provider site, its control site, and their shared app state."""

    def __init__(self, settings: MockSettings, host: str) -> None:
        self.host = host
        self.app = create_mock_app(settings)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        self._control_runner = web.AppRunner(create_control_app(self.app), access_log=None,
                                             shutdown_timeout=2.0)
        self._outages: asyncio.Task | None = None
        self.port = 0
        self.control_port = 0

    @property
    def base_url(self) -> str:
        """The provider's URL, with /v1: what a gateway is configured with."""
        return f"http://{authority(self.host, self.port)}/v1"

    @property
    def control_url(self) -> str:
        """The control site's root: `control_url + "/_mock/stats"` answers even during an outage."""
        return f"http://{authority(self.host, self.control_port)}"

    async def start(self, port: int, control_port: int, announce: Announce | None = None) -> None:
        await self._runner.setup()
        await self._control_runner.setup()
        try:
            site = await listen(self._runner, self.host, port, "--port")
            self.port = site.port
            self.control_port = (await listen(self._control_runner, self.host, control_port,
                                              "--control-port")).port
        except MockListenError:
            await self.cleanup()
            raise
        # Bound first even when an outage is due at once, so a taken port is still reported.
        follower = OutageFollower(self._runner, site, self.host, self.port, self.app[PROVIDER],
                                  self.app[LEDGER], announce)
        self._outages = asyncio.create_task(follower.run(), name="mock-upstream outages")

    async def cleanup(self) -> None:
        if self._outages is not None:
            self._outages.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._outages
        await self._control_runner.cleanup()
        await self._runner.cleanup()


class StartedMock(NamedTuple):
    server: MockServer  # end it with `await server.cleanup()`
    base_url: str


async def start_mock(settings: MockSettings, host: str = "127.0.0.1", port: int = 0,
                     control_port: int = 0, *, announce: Announce | None = None) -> StartedMock:
    """Serve on host:port and host:control_port (0 picks a free port); raises MockListenError.
    `announce` gets a line when an outage starts or ends."""
    server = MockServer(settings, host)
    await server.start(port, control_port, announce)
    return StartedMock(server, server.base_url)


async def _serve_until_signalled(settings: MockSettings, host: str, port: int, control_port: int) -> None:
    server, url = await start_mock(settings, host, port, control_port,
                                   announce=lambda line: print(line, flush=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock-upstream listening on {url}", flush=True)
    print(f"mock-upstream control on {server.control_url}/_mock (stats, config, requests, attempts, reset)",
          flush=True)
    try:
        await stop.wait()
    finally:
        await server.cleanup()


def run_mock(settings: MockSettings, host: str, port: int, control_port: int = 0) -> None:
    """Blocking, for the CLI: serve until SIGINT or SIGTERM; raises MockListenError."""
    asyncio.run(_serve_until_signalled(settings, host, port, control_port))
