"""What the command line runs: servers, migrations, keys, replay, projection rebuilds."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time

import msgspec
import structlog

from . import commands, db, events as ev, projections, store
from .batch import evolve
from .config import Settings, SettingsError

log = structlog.get_logger("eventbatch")


async def run_server(settings: Settings, role: str, host: str | None, port: int | None) -> int:
    """serve = api + worker in one process; api and worker alone for scaling out."""
    from aiohttp import web

    from .api.app import create_app
    from .worker import Worker

    url = await asyncio.to_thread(db.database_url, settings)
    pool = await db.create_pool(url, max_size=20)
    async with pool.acquire() as conn:
        await db.migrate(conn)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = None
    worker = None
    try:
        if role in ("serve", "api"):
            runner = web.AppRunner(create_app(settings, pool, pool_size=20), access_log=None, handle_signals=False)
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


async def migrate(settings: Settings) -> int:
    url = await asyncio.to_thread(db.database_url, settings)
    pool = await db.create_pool(url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            applied = await db.migrate(conn, progress=lambda name: print(f"applied {name}", flush=True))
    finally:
        await pool.close()
    print(f"{len(applied)} migration(s) applied; the database is up to date.")
    return 0


async def create_key(settings: Settings, project: str) -> int:
    if not project.strip():
        raise SettingsError("--project must not be empty; name the project (tenant) the key belongs to.")
    pool = await db.open_database(settings, max_size=1)
    try:
        async with pool.acquire() as conn:
            key = await commands.create_key(conn, project)
    finally:
        await pool.close()
    print(f"Created an API key for project '{project}'. It is shown once; store it now:")
    print(key)
    return 0


# --- replay ----------------------------------------------------------------------------------

class ReplayLine(msgspec.Struct, omit_defaults=True):
    position: int
    time: str
    event: str
    status: str | None = None
    custom_id: str | None = None
    index: int | None = None
    attempts: int | None = None
    status_code: int | None = None
    error_code: str | None = None
    detail: str | None = None


def _describe(e: ev.Event, status: str | None) -> dict:
    match e:
        case ev.RequestSucceeded() | ev.RequestFailed():
            tried = ", ".join(f"{a.status_code or a.error} ({a.duration_ms} ms)" for a in e.attempts)
            return dict(custom_id=e.custom_id, index=e.index, attempts=len(e.attempts),
                        status_code=e.status_code, error_code=getattr(e, "error_code", None),
                        detail=f"tried: {tried}" if tried else None)
        case ev.BatchCreated():
            return dict(status=status, detail=f"endpoint={e.endpoint} input_file_id={e.input_file_id}")
        case ev.BatchValidated():
            return dict(detail=f"total={e.total} model={e.model}")
        case ev.BatchValidationFailed():
            return dict(status=status, detail=f"{e.error_count} bad line(s)")
        case ev.BatchOutputWritten():
            return dict(detail=f"output_file_id={e.output_file_id} error_file_id={e.error_file_id}")
        case _:
            return dict(status=status)


async def replay(settings: Settings, batch_id: str, *, as_json: bool, requests: bool) -> int:
    pool = await db.open_database(settings, max_size=1)
    enc = msgspec.json.Encoder()
    out = sys.stdout
    try:
        async with pool.acquire() as conn:
            if await conn.fetchval("SELECT 1 FROM events WHERE batch_id = $1 LIMIT 1", batch_id) is None:
                raise SettingsError(f"no batch '{batch_id}' in the log; check the id (eventbatch replay BATCH_ID).")
            state = None
            first_at = last_at = None
            succeeded = failed = retried = attempts = upstream_ms = 0
            async for row in store.read_batch_events(conn, batch_id):
                e = ev.decode(row["data"])
                at = row["recorded_at"]
                first_at = first_at or at
                last_at = at
                is_request = isinstance(e, ev.REQUEST_OUTCOMES)
                if is_request:
                    succeeded += isinstance(e, ev.RequestSucceeded)
                    failed += isinstance(e, ev.RequestFailed)
                    retried += len(e.attempts) > 1
                    attempts += len(e.attempts)
                    upstream_ms += sum(a.duration_ms for a in e.attempts)
                state = evolve(state, e)
                if is_request and not requests:
                    continue
                line = ReplayLine(position=row["position"], time=at.isoformat(timespec="milliseconds"),
                                  event=row["type"], **_describe(e, state.status if state else None))
                if as_json:
                    out.write(enc.encode(line).decode() + "\n")
                else:
                    fields = " ".join(f"{k}={v}" for k, v in msgspec.structs.asdict(line).items()
                                      if v is not None and k not in ("position", "time", "event"))
                    out.write(f"{line.time}  {line.event:<24} {fields}\n")
            duration = (last_at - first_at).total_seconds() if first_at else 0.0
            summary = dict(batch_id=batch_id, status=state.status if state else None,
                           requests_succeeded=succeeded, requests_failed=failed, requests_retried=retried,
                           upstream_attempts=attempts,
                           mean_attempt_ms=round(upstream_ms / attempts, 1) if attempts else None,
                           duration_seconds=round(duration, 3))
            if as_json:
                out.write(enc.encode({"summary": summary}).decode() + "\n")
            else:
                out.write(f"-- {batch_id}: {summary['status']}; {succeeded} succeeded, {failed} failed, "
                          f"{retried} retried; {attempts} upstream attempts, mean {summary['mean_attempt_ms']} ms; "
                          f"{duration:.3f}s from first to last event\n")
    finally:
        await pool.close()
    return 0


# --- projections -----------------------------------------------------------------------------

class _Progress:
    """A progress line on stderr: events folded, out of how many, rate."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        pct = 100.0 * done / total if total else 100.0
        width = 30
        bar = "#" * int(width * pct / 100)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\rfolding events [{bar:<{width}}] {done}/{total} ({pct:5.1f}%) {rate:,.0f} events/s{end}")
        sys.stderr.flush()


async def rebuild(settings: Settings, *, verify: bool) -> int:
    pool = await db.open_database(settings, max_size=1)
    try:
        async with pool.acquire() as conn:
            if verify:
                folded, diffs = await projections.verify(conn, _Progress())
                for d in diffs:
                    print(d)
                print(f"verified {len(folded.batches)} batch view(s) and {len(folded.files)} file view(s) "
                      f"against {folded.events} events: "
                      + (f"{len(diffs)} difference(s)." if diffs else "no differences."))
                return 1 if diffs else 0
            folded = await projections.rebuild(conn, _Progress())
            print(f"rebuilt {len(folded.batches)} batch view(s) and {len(folded.files)} file view(s) "
                  f"from {folded.events} events.")
    finally:
        await pool.close()
    return 0
