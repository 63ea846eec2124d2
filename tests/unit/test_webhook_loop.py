"""The webhook loop while the database is away (SPEC §14: operators read these logs): one
warning when claims start failing and one line when they resume, not a traceback a second."""

from __future__ import annotations

import asyncio
import socket

from structlog.testing import capture_logs

from eventbatch import pool
from eventbatch.config import load_settings
from eventbatch.worker import webhooks


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_database_outage_is_one_warning_not_a_traceback_each_poll(monkeypatch):
    monkeypatch.setattr(webhooks, "POLL_SECONDS", 0.05)

    async def main():
        # A real pool on a port nobody listens on: every claim is refused, as in an outage.
        p = await pool.open_pool(f"postgresql://x@127.0.0.1:{_closed_port()}/x", min_size=0, max_size=1)
        stop = asyncio.Event()
        with capture_logs() as logs:
            loop = asyncio.create_task(webhooks.Deliveries(p, load_settings({})).run(stop))
            await asyncio.sleep(1.0)      # ~20 polls
            stop.set()
            await loop
        await p.close()
        return logs

    logs = asyncio.run(main())
    said = [x for x in logs if x["event"].startswith("webhook_")]
    assert [x["event"] for x in said] == ["webhook_claims_waiting_for_database"]
    assert said[0]["log_level"] == "warning" and said[0]["error"] == "DatabaseUnavailable"
    assert "exc_info" not in said[0]
