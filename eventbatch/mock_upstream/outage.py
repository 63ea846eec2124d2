"""Outages: for a window the provider's listening socket is closed, so a connect is refused
(ECONNREFUSED), and its open connections, idle keep-alive ones and those with a request in
flight, are dropped; then the same port is listened on again.

The control site is another socket and is left alone, so a test can watch and end an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Callable

from aiohttp import web

from .faults import ProviderState
from .ledger import MockLedger
from .listening import MockListenError, authority, listen

# While the port cannot be had again (someone else took it meanwhile), try again this often.
_RELISTEN_SECONDS = 0.1

Announce = Callable[[str], None]


class OutageFollower:
    """Keeps the provider's site closed while `provider.outage` holds and open otherwise."""

    def __init__(self, runner: web.AppRunner, site: web.TCPSite, host: str, port: int,
                 provider: ProviderState, ledger: MockLedger, announce: Announce | None) -> None:
        self._runner = runner
        self._site: web.TCPSite | None = site
        self._host = host
        self._port = port
        self._provider = provider
        self._ledger = ledger
        self._announce = announce or (lambda line: None)
        self._relisten_failed = False
        provider.outages_followed = True

    async def run(self) -> None:
        outage = self._provider.outage
        changed = self._provider.outage_changed
        while True:
            changed.clear()  # before looking, so a change made while we act wakes the wait below
            now = time.monotonic()
            wait = math.inf
            if outage.holds(now):
                if self._site is not None:
                    await self._go_down(outage.end - now)
            elif self._site is None and not await self._come_up():
                wait = _RELISTEN_SECONDS
            edge = outage.next_edge(now)
            if edge is not None:
                wait = min(wait, edge - now)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), None if wait == math.inf else wait)

    async def _go_down(self, seconds: float) -> None:
        site, self._site = self._site, None
        await site.stop()  # closes the listening socket: from here on a connect is refused
        dropped = 0
        server = self._runner.server
        for handler in server.connections if server is not None else ():
            transport = handler.transport
            if transport is not None and not transport.is_closing():
                transport.abort()
                dropped += 1
        self._ledger.dropped_connections += dropped
        self._announce(f"mock-upstream outage: refusing connections on {authority(self._host, self._port)} "
                       f"for {seconds:.1f} s (dropped {dropped} open connections)")

    async def _come_up(self) -> bool:
        try:
            self._site = await listen(self._runner, self._host, self._port, "--port")
        except MockListenError as exc:
            if not self._relisten_failed:
                self._announce(f"mock-upstream outage over, but {exc} Trying again every {_RELISTEN_SECONDS} s.")
                self._relisten_failed = True
            return False
        self._relisten_failed = False
        self._announce(f"mock-upstream outage over: listening on {authority(self._host, self._port)} again")
        return True
