"""Opening the mock's listening sockets, and the one-line error when a port cannot be had."""

from __future__ import annotations

import os

from aiohttp import web


class MockListenError(Exception):
    """A port the mock was asked for cannot be listened on; the message says what to do."""

    def __init__(self, host: str, port: int, option: str, cause: OSError) -> None:
        reason = os.strerror(cause.errno) if cause.errno and cause.errno > 0 else (cause.strerror or str(cause))
        super().__init__(f"cannot listen on {authority(host, port)} ({reason}); choose another {option}.")


def authority(host: str, port: int) -> str:
    """host:port as a client dials it (a wildcard address as loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


async def listen(runner: web.AppRunner, host: str, port: int, option: str) -> web.TCPSite:
    """A started site on host:port; raises MockListenError naming `option` (the flag to change)."""
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await site.stop()  # start() registered it with the runner before the bind failed
        raise MockListenError(host, port, option, exc) from exc
    return site
