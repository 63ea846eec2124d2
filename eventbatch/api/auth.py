"""Authentication of /v1: `Authorization: Bearer <key>` → the request's project.

Two things stand in front of the database:
- a cache of keys found good, each entry trusted for CACHE_SECONDS only, so that a key revoked
  (`eventbatch keys revoke`, in any process) is refused by every API process within 5 s;
- a throttle of failed authentication per client address (a token bucket): guessing keys costs
  at most a few database lookups a second, and past that the answer is 429 at once.

Only failures spend the bucket, and an empty bucket never refuses a good key: behind a proxy or
NAT every client shares one address, so one client sending junk keys must not lock the others
out. With the bucket empty, a key is checked against the KeyDirectory (the hashes of every key
not revoked, one statement every DIRECTORY_SECONDS however many keys arrive) and only a key found
there is looked up; any other is 429 without touching the database."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Awaitable, Callable

from aiohttp import web

from .. import api_keys
from .errors import ApiError
from .state import POOL, PROJECT

CACHE_SECONDS = 2.0          # a revoked key works at most this long in a process that had it cached
CACHE_ENTRIES = 10_000
FAILURES_BURST = 20          # failed authentications an address may have at once …
FAILURES_PER_SECOND = 2.0    # … and then this many a second
THROTTLE_ADDRESSES = 10_000
DIRECTORY_SECONDS = 1.0      # a key created meanwhile gets past an empty bucket at most this much later


class KeyCache:
    """Keys found good lately: key → (project, when it was checked)."""

    def __init__(self, ttl: float = CACHE_SECONDS):
        self.ttl = ttl
        self._entries: dict[str, tuple[str, float]] = {}
        self._pending: dict[str, asyncio.Future] = {}

    def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry[1] >= self.ttl:
            del self._entries[key]    # checked again: it may have been revoked meanwhile
            return None
        return entry[0]

    async def look_up(self, key: str, look: Callable[[], Awaitable[str]]) -> str:
        """One lookup of a key at a time: requests that miss the cache together (a client's
        first burst with a new key) share it, so they cost one lookup and one try."""
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(look())
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    def put(self, key: str, project: str) -> None:
        if len(self._entries) >= CACHE_ENTRIES:
            self._entries.clear()
        self._entries[key] = (project, time.monotonic())


class FailureThrottle:
    """A token bucket per client address, spent by failed authentications."""

    def __init__(self, burst: float = FAILURES_BURST, rate: float = FAILURES_PER_SECOND):
        self.burst, self.rate = burst, rate
        self._buckets: dict[str, tuple[float, float]] = {}   # address → (tokens, at)

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def take(self, address: str) -> float:
        """Reserve a try for a lookup: 0 when one was taken, else how long until one is free.
        Taken before the lookup, so that lookups in flight at once count too."""
        now = time.monotonic()
        tokens = self._tokens(address, now)
        if tokens < 1:
            return (1 - tokens) / self.rate
        if len(self._buckets) >= THROTTLE_ADDRESSES:
            self._buckets.clear()
        self._buckets[address] = (tokens - 1, now)
        return 0.0

    def give_back(self, address: str) -> None:
        """The key was good: its try is not a failure."""
        now = time.monotonic()
        self._buckets[address] = (min(self.burst, self._tokens(address, now) + 1), now)


class KeyDirectory:
    """The hashes of the keys not revoked, loaded on demand (only while some address's bucket is
    empty) and at most once every `ttl` seconds, one load at a time."""

    def __init__(self, ttl: float = DIRECTORY_SECONDS):
        self.ttl = ttl
        self._hashes: frozenset[str] = frozenset()
        self._at = -math.inf
        self._lock = asyncio.Lock()

    async def may_be_good(self, key: str, load: Callable[[], Awaitable[frozenset[str]]]) -> bool:
        if not api_keys.well_formed(key):
            return False
        if time.monotonic() - self._at >= self.ttl:
            async with self._lock:
                if time.monotonic() - self._at >= self.ttl:
                    self._hashes, self._at = await load(), time.monotonic()
        return api_keys.hash_of(key) in self._hashes


KEY = web.RequestKey("api_key", str)   # the key the request authenticated with (memory only, never logged)
KEYS = web.AppKey("key_cache", KeyCache)
THROTTLE = web.AppKey("auth_throttle", FailureThrottle)
DIRECTORY = web.AppKey("key_directory", KeyDirectory)


def install(app: web.Application) -> None:
    app[KEYS] = KeyCache()
    app[THROTTLE] = FailureThrottle()
    app[DIRECTORY] = KeyDirectory()


@web.middleware
async def auth_middleware(request: web.Request, handler):
    if not request.path.startswith("/v1/"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'; "
                            "create one with 'eventbatch keys create --project NAME'.")
    keys = request.app[KEYS]
    project = keys.get(key)
    if project is None:
        project = await keys.look_up(key, lambda: _look_up(request, key))
    request[PROJECT] = project
    request[KEY] = key
    return await handler(request)


async def still_authorized(request: web.Request) -> bool:
    """For an answer that goes on for long (the SSE feed, for as long as its batch runs): whether
    the request's key is still good, asked as a new request would ask it (the cache, or a lookup
    once the cached entry is CACHE_SECONDS old). A key revoked meanwhile must not keep a feed
    open: revocation holds within 5 s for every answer, not only for new requests. Only a key
    found bad ends it; a throttled lookup (429) is asked again later."""
    key, keys = request[KEY], request.app[KEYS]
    if keys.get(key) is not None:
        return True
    try:
        await keys.look_up(key, lambda: _look_up(request, key))
    except ApiError as exc:
        return exc.status != 401
    return True


async def _look_up(request: web.Request, key: str) -> str:
    throttle, address = request.app[THROTTLE], request.remote or "-"
    pool = request.app[POOL]
    wait = throttle.take(address)     # a try reserved; given back below unless the key is bad
    if wait > 0:
        # The address's tries are used up, maybe by someone else behind the same address: a
        # good key still gets in, checked against the directory first so that bad ones cost
        # no lookup each.
        async def load() -> frozenset[str]:
            async with pool.acquire() as conn:
                return await api_keys.usable_key_hashes(conn)
        if not await request.app[DIRECTORY].may_be_good(key, load):
            retry = max(1, math.ceil(wait))
            raise ApiError(429, f"Too many requests with an incorrect API key from your address. Wait {retry} "
                                "second(s), then retry with a valid key.", code="rate_limit_exceeded",
                           headers={"Retry-After": str(retry)})
    try:
        async with pool.acquire() as conn:
            project = await api_keys.project_for_key(conn, key)
    except BaseException:
        if wait == 0:
            throttle.give_back(address)     # not the key's fault (the database is away): no failure
        raise
    if project is None:
        raise ApiError(401, "Incorrect API key provided. Create one with 'eventbatch keys create --project NAME'.",
                       code="invalid_api_key")
    if wait == 0:
        throttle.give_back(address)
    request.app[KEYS].put(key, project)
    return project
