"""Webhooks without a database: the payload's shape, the signature (checked with the Standard
Webhooks reference package), the retry schedule."""

from __future__ import annotations

import json
import random
import time

import pytest
from standardwebhooks import Webhook

from eventbatch import webhooks
from eventbatch.config import Settings, SettingsError


def test_payload_is_openais_event_object_and_the_signature_verifies():
    body = webhooks.payload("evt_1", "batch.expired", "batch_abc", 1711471533.9)
    assert json.loads(body) == {"id": "evt_1", "object": "event", "type": "batch.expired",
                                "created_at": 1711471533, "data": {"id": "batch_abc"}}
    secret = webhooks.new_secret()
    now = time.time()
    headers = webhooks.signed_headers(secret, "msg_1", now, body)
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == str(int(now))
    assert Webhook(secret).verify(body, headers)["type"] == "batch.expired"
    with pytest.raises(Exception):
        Webhook(secret).verify(body.replace(b"batch_abc", b"batch_xyz"), headers)
    with pytest.raises(Exception):
        Webhook(webhooks.new_secret()).verify(body, headers)


def test_retries_back_off_up_to_twelve_hours_and_stop_after_72():
    s = Settings()
    rng = random.Random(7)
    owed, now = 0.0, 0.0
    delays = []
    for attempt in range(1, 40):
        at = webhooks.next_attempt_at(attempt, owed, now, s, rng)
        if at is None:
            break
        delays.append(at - now)
        now = at
    assert 4.5 <= delays[0] <= 5.5 and 18 <= delays[1] <= 22          # 5 s, then 4× longer
    assert max(delays) <= 12 * 3600 * 1.1 and max(delays) >= 12 * 3600 * 0.9
    assert now <= 72 * 3600 and now + 12 * 3600 * 0.9 > 60 * 3600    # retried for most of 72 h, not past
    assert 10 <= len(delays) <= 16
    quick = Settings(webhook_backoff_seconds=0.2, webhook_retry_seconds=2)
    assert webhooks.next_attempt_at(1, 0.0, 0.0, quick, rng) < 0.25
    assert webhooks.next_attempt_at(1, 0.0, 1.9, quick, rng) is None


def test_event_lists_and_urls_are_checked():
    assert webhooks.parse_event_types(None) == list(webhooks.EVENT_TYPES)
    assert webhooks.parse_event_types("batch.failed, batch.failed,batch.expired") == ["batch.failed", "batch.expired"]
    for bad in ("", "batch.done", "batch.completed,nope"):
        with pytest.raises(SettingsError):
            webhooks.parse_event_types(bad)
    assert webhooks.check_url("https://example.com/h") == "https://example.com/h"
    for bad in ("example.com/h", "ftp://example.com", "https://user:pw@example.com/h", "http:///x"):
        with pytest.raises(SettingsError):
            webhooks.check_url(bad)
