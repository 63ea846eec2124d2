"""The mock's app, and serving it: `start_mock` for tests, `run_mock` for the CLI."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from .control import add_control_routes
from .ledger import MockLedger
from .provider import add_provider_routes
from .settings import MockSettings
from .state import LEDGER, SETTINGS, STOPPING


async def _signal_stopping(app: web.Application) -> None:
    app[STOPPING].set()


def create_mock_app(settings: MockSettings) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[SETTINGS] = settings
    app[LEDGER] = MockLedger(settings.seed)
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_signal_stopping)
    add_provider_routes(app)
    add_control_routes(app)
    return app


def _base_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


async def start_mock(settings: MockSettings, host: str = "127.0.0.1",
                     port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve on host:port (0 picks a free port); the caller ends it with `await runner.cleanup()`."""
    runner = web.AppRunner(create_mock_app(settings), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    return runner, _base_url(host, runner.addresses[0][1])


async def _serve_until_signalled(settings: MockSettings, host: str, port: int) -> None:
    runner, url = await start_mock(settings, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock-upstream listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_mock(settings: MockSettings, host: str, port: int) -> None:
    """Blocking, for the CLI: serve until SIGINT or SIGTERM."""
    asyncio.run(_serve_until_signalled(settings, host, port))
