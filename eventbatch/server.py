"""`eventbatch serve | api | worker`: the long-running processes.

serve = api + worker in one process (the worker on a thread of its own); api and worker alone
for scaling out. Every role also runs the sweeper of due work (validation, expiry, settling)."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from urllib.parse import urlsplit

import structlog

from . import db
from .config import Settings, SettingsError, mask_url
from .pool import api_profile

log = structlog.get_logger("eventbatch")


async def run_server(settings: Settings, role: str, host: str | None, port: int | None) -> int:
    """serve = api + worker in one process; api and worker alone for scaling out."""
    from aiohttp import web

    from .api.app import create_app
    from .api.runner import ApiRunner
    from .worker import Worker

    providers = _check_upstream(settings, role)   # before anything listens: a serve that cannot work says so
    created = db.embedded_is_new(settings)
    url = await db.runtime_url(settings)
    if role == "worker":
        pool = await db.create_pool(url, kind="worker", max_size=20)
    else:
        pool = await db.create_pool(url, kind="api", max_size=20,
                                    server_settings=api_profile(settings.upload_read_timeout_seconds))
    database = await asyncio.to_thread(db.describe, settings, created)
    log.info("database", database=database.shown, created=database.created)
    if database.created and database.others:
        log.warning("embedded_database_created_beside_another", data_dir=str(settings.data_dir),
                    running_for=[str(d) for d in database.others], message=database.beside_another())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = None
    worker = None
    sweeper = None
    try:
        # Due work (validation, expiry, settling) is every role's, on connections of its own.
        from .worker.providers import configured_model_check
        from .worker.sweeper import Sweeper, open_pool
        sweeper = Sweeper(await open_pool(url), settings.chunk_size, configured_model_check(settings))
        await sweeper.start()
        if role in ("serve", "api"):
            runner = ApiRunner(create_app(settings, pool, pool_size=20), access_log=None, handle_signals=False)
            await runner.setup()
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                raise SettingsError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port.") \
                    from None
            root = _listening_root(runner, host)
            log.info("api_listening", url=f"{root}/v1", dashboard=f"{root}/dashboard")
        if role == "serve":
            # The worker gets a thread, an event loop and a pool of its own: at full speed it keeps
            # a loop busy, and API reads must not queue behind it.
            worker = WorkerThread(settings, url, providers)
            await worker.start()
        elif role == "worker":
            worker = Worker(settings, pool, providers=providers)
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
            log.info("worker_probes_listening", url=_listening_root(runner, host or "127.0.0.1"))
        await stop.wait()
        log.info("shutting_down", role=role)
    finally:
        if worker is not None:
            await worker.stop()
        if sweeper is not None:
            await sweeper.stop()
            await sweeper.pool.close()
        if runner is not None:
            await runner.cleanup()
        await pool.close()
    return 0


def _check_upstream(settings: Settings, role: str):
    """The providers a worker needs, read before the API listens: without one, `serve` stops
    at once with the reason instead of logging that it listens and then exiting."""
    if role == "api":
        return None
    from .worker.providers import load_providers
    try:
        providers = load_providers(settings)
    except SettingsError as exc:
        other = " Run `eventbatch api` for the API alone." if role == "serve" else ""
        raise SettingsError(f"`eventbatch {role}` cannot start its worker: {exc}{other}") from None
    if settings.upstream_url is not None and not settings.upstream_api_key \
            and urlsplit(settings.upstream_url).password is None:   # user:password@ is basic auth: a key
        log.warning("upstream_api_key_empty", upstream_url=mask_url(settings.upstream_url),
                    message="EVENTBATCH_UPSTREAM_API_KEY is not set: requests go to the provider without a "
                            "key. Set it if the provider needs one.")
    return providers


def _listening_root(runner, host: str) -> str:
    """The address really bound (with --port 0, the port the system picked)."""
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound_host, bound_port = address[0], address[1]
            shown = host if host not in ("", "0.0.0.0", "::") else bound_host
            return f"http://{'[' + shown + ']' if ':' in shown else shown}:{bound_port}"
    return f"http://{host}"


class WorkerThread:
    """`serve`'s worker, in one process with the API but on its own thread and event loop."""

    def __init__(self, settings: Settings, url: str, providers=None):
        from .worker.providers import load_providers
        self.settings, self.url = settings, url
        # a bad provider config fails here, at start
        self.providers = providers if providers is not None else load_providers(settings)
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
        pool = await db.create_pool(self.url, kind="worker", max_size=12)
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
