"""`eventbatch serve | api | worker`: the long-running processes.

serve = api + worker in one process (the worker on a thread of its own); api and worker alone
for scaling out. Every role also runs the sweeper of due work (validation, expiry, settling)."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading

import structlog

from . import db
from .config import Settings, SettingsError

log = structlog.get_logger("eventbatch")


async def run_server(settings: Settings, role: str, host: str | None, port: int | None) -> int:
    """serve = api + worker in one process; api and worker alone for scaling out."""
    from aiohttp import web

    from .api.app import create_app
    from .api.runner import ApiRunner
    from .worker import Worker

    url = await db.runtime_url(settings)
    pool = await db.create_pool(url, max_size=20)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = None
    worker = None
    try:
        if role in ("serve", "api"):
            runner = ApiRunner(create_app(settings, pool, pool_size=20), access_log=None, handle_signals=False)
            await runner.setup()
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                raise SettingsError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port.") \
                    from None
            log.info("api_listening", url=f"http://{host}:{port}/v1")
        if role == "serve":
            # The worker gets a thread, an event loop and a pool of its own: at full speed it keeps
            # a loop busy, and API reads must not queue behind it.
            worker = WorkerThread(settings, url)
            await worker.start()
        elif role == "worker":
            worker = Worker(settings, pool)
            await worker.start()
        if role == "worker" and port is not None:
            # A worker has no API; it answers probes and /metrics on its own port when given one.
            from .api import health
            from .api.app import POOL
            probes = web.Application()
            probes[POOL] = pool
            health.add_routes(probes)
            runner = web.AppRunner(probes, access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, host or "127.0.0.1", port).start()
            log.info("worker_probes_listening", url=f"http://{host or '127.0.0.1'}:{port}")
        await stop.wait()
        log.info("shutting_down", role=role)
    finally:
        if worker is not None:
            await worker.stop()
        if runner is not None:
            await runner.cleanup()
        await pool.close()
    return 0


class WorkerThread:
    """`serve`'s worker, in one process with the API but on its own thread and event loop."""

    def __init__(self, settings: Settings, url: str):
        from .worker.providers import load_providers
        self.settings, self.url = settings, url
        self.providers = load_providers(settings)   # a bad provider config fails here, at start
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="eventbatch-worker", daemon=True)

    async def start(self) -> None:
        # The API thread waits for the GIL at most this long when the worker computes: short, so
        # that reads stay fast while a batch drains at full speed.
        sys.setswitchinterval(0.001)
        self._thread.start()
        await asyncio.to_thread(self._started.wait)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the starting thread, or logged
            if not self._started.is_set():
                self._error = exc
                self._started.set()
            else:
                log.exception("worker_thread_failed")

    async def _main(self) -> None:
        from .worker import Worker
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        pool = await db.create_pool(self.url, max_size=12)
        try:
            worker = Worker(self.settings, pool, providers=self.providers)
            await worker.start()
            self._started.set()
            await self._stop.wait()
            await worker.stop()
        finally:
            await pool.close()

    async def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join, 60)
