"""The typed keys under which the mock's apps hold their shared state."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .faults import ProviderState
from .ledger import MockLedger
from .settings import MockSettings

SETTINGS = web.AppKey("mock_settings", MockSettings)
LEDGER = web.AppKey("mock_ledger", MockLedger)
STOPPING = web.AppKey("mock_stopping", asyncio.Event)
PROVIDER = web.AppKey("mock_provider_state", ProviderState)
