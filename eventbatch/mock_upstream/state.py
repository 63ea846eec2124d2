"""The typed keys under which the mock's apps hold their shared state."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .ledger import MockLedger
from .settings import MockSettings

SETTINGS = web.AppKey("mock_settings", MockSettings)
LEDGER = web.AppKey("mock_ledger", MockLedger)
STOPPING = web.AppKey("mock_stopping", asyncio.Event)
