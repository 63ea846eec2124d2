"""API keys (SPEC §8): a key belongs to one project (the tenant).

A key's life is in the log: `api_key_created` and `api_key_revoked` in stream 'key-<key id>'.
The table api_keys is their projection (KeyView, rebuilt by `projections rebuild` with the other
views). The key itself is shown once, at creation; only its SHA-256 is kept, in api_key_secrets
beside the log, never in an event. Statements: sql/keys.sql."""

from __future__ import annotations

import datetime as dt
import json
import time

import asyncpg
import msgspec

from . import db, events as ev, ids, store
from .config import Settings, SettingsError
from .sql import Q


class KeyView(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    project: str
    created_at: int
    revoked_at: int | None = None
    hint: str = ""              # the key's last four characters, for telling keys apart
    version: int = 0


def key_stream(key_id: str) -> str:
    return f"key-{key_id}"


def evolve_key(state: KeyView | None, event: ev.Event) -> KeyView:
    match event:
        case ev.ApiKeyCreated():
            return KeyView(id=event.key_id, project=event.project, created_at=int(event.at), hint=event.hint,
                           version=1)
        case ev.ApiKeyRevoked():
            assert state is not None
            return msgspec.structs.replace(state, revoked_at=int(event.at), version=state.version + 1)
    raise TypeError(f"not an API key event: {type(event).__name__}")


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(KeyView)


def decode_key(doc: bytes) -> KeyView:
    return _dec.decode(doc)


def key_row(seq: int, view: KeyView) -> tuple:
    """The view's row in api_keys: id, project, seq, revoked, version, doc (rebuild writes it too)."""
    return (view.id, view.project, seq, view.revoked_at is not None, view.version, _enc.encode(view))


async def _save(conn: asyncpg.Connection, view: KeyView, seq: int = 0) -> None:
    await conn.execute(Q.key_view_upsert, *key_row(seq, view))


async def create_key(conn: asyncpg.Connection, project: str) -> str:
    """A new key of the project; returns the key (its only appearance anywhere)."""
    key, key_id = ids.api_key(), ids.key_id()
    event = ev.ApiKeyCreated(key_id=key_id, project=project, at=time.time(), hint=key[-4:])
    async with conn.transaction():
        [seq] = await store.append(conn, key_stream(key_id), 0, [event])
        await conn.execute(Q.key_secret_insert, key_id, ids.key_hash(key))
        await _save(conn, evolve_key(None, event), seq)
    return key


class UnknownKey(Exception):
    pass


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> tuple[KeyView, bool]:
    """Revoke a key; returns its view and whether this call revoked it (False: it already was).
    Every API process refuses it within a few seconds: their caches re-check a key that often."""
    async with conn.transaction():
        doc = await conn.fetchval(Q.key_view_lock, key_id)
        if doc is None:
            raise UnknownKey(key_id)
        view = decode_key(doc)
        if view.revoked_at is not None:
            return view, False
        event = ev.ApiKeyRevoked(key_id=key_id, at=time.time())
        await store.append(conn, key_stream(key_id), view.version, [event])
        view = evolve_key(view, event)
        await _save(conn, view)
    return view, True


# Well-formed keys only reach the database: "eb-" and 43 URL-safe characters (ids.api_key).
_KEY_LENGTH = len(ids.api_key())
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def well_formed(key: str) -> bool:
    return len(key) == _KEY_LENGTH and key.startswith("eb-") and _KEY_CHARS.issuperset(key[3:])


async def authenticate(conn, key: str) -> tuple[str, str] | None:
    """(key id, project) of a key that exists and is not revoked, noting its use; else None."""
    if not well_formed(key):
        return None
    row = await conn.fetchrow(Q.key_authenticate, ids.key_hash(key))
    return None if row is None else (row["id"], row["project"])


async def usable_key_hashes(conn) -> frozenset[str]:
    """The SHA-256 of every key not revoked (see api/auth.py's KeyDirectory)."""
    return frozenset(r["key_hash"] for r in await conn.fetch(Q.key_hashes_usable))


def hash_of(key: str) -> str:
    return ids.key_hash(key)


async def project_for_key(conn, key: str) -> str | None:
    found = await authenticate(conn, key)
    return None if found is None else found[1]


# --- the commands -----------------------------------------------------------------------------

def _when(seconds: int | float | dt.datetime | None) -> str:
    if seconds is None:
        return "-"
    moment = seconds if isinstance(seconds, dt.datetime) else dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


MAX_PROJECT_CHARS = 128


def project_name(value: str, what: str) -> str:
    """A project name given on the command line, stripped; refused in one line when it is empty,
    over MAX_PROJECT_CHARS, or holds characters that are not printable (control bytes, line
    breaks): the name reaches console logs and `keys list`, where those would garble the line."""
    name = value.strip()
    if not name:
        raise SettingsError(f"--project must not be empty; name the project {what}.")
    if len(name) > MAX_PROJECT_CHARS:
        raise SettingsError(f"--project is {len(name)} characters long; a project name is at most "
                            f"{MAX_PROJECT_CHARS}. Use a shorter name.")
    if not name.isprintable():
        raise SettingsError("--project holds control characters or line breaks; use printable characters only "
                            "(letters, digits, spaces, punctuation).")
    return name


async def keys_command(settings: Settings, args) -> int:
    """`eventbatch keys create | list | revoke`."""
    if args.keys_command == "create":
        args.project = project_name(args.project, "(tenant) the key belongs to")
    pool = await db.open_database(settings, max_size=1)
    try:
        async with pool.acquire() as conn:
            match args.keys_command:
                case "create":
                    key = await create_key(conn, args.project)
                    print(f"Created an API key for project '{args.project}'. It is shown once; store it now:")
                    print(key)
                case "list":
                    rows = await conn.fetch(Q.key_list, args.project)
                    _print_keys([(decode_key(r["doc"]), r["last_used_at"]) for r in rows], args)
                case "revoke":
                    try:
                        view, revoked = await revoke_key(conn, args.key_id)
                    except UnknownKey:
                        raise SettingsError(f"no API key '{args.key_id}'; see `eventbatch keys list` for the "
                                            "ids.") from None
                    print(f"Revoked API key {view.id} of project '{view.project}': every API process refuses "
                          "it within 5 seconds." if revoked else
                          f"API key {view.id} of project '{view.project}' was already revoked at "
                          f"{_when(view.revoked_at)}.")
    finally:
        await pool.close()
    return 0


def _print_keys(keys: list[tuple[KeyView, dt.datetime | None]], args) -> None:
    if getattr(args, "json", False):
        for view, last_used in keys:
            print(json.dumps({"id": view.id, "project": view.project, "hint": view.hint,
                              "created_at": view.created_at, "revoked_at": view.revoked_at,
                              "last_used_at": int(last_used.timestamp()) if last_used else None}))
        return
    if not keys:
        print("No API keys." if args.project is None else f"No API keys for project '{args.project}'.")
        return
    table = [("ID", "PROJECT", "KEY", "CREATED", "LAST USED", "REVOKED")]
    table += [(v.id, v.project, f"eb-…{v.hint}" if v.hint else "-", _when(v.created_at),
               _when(last_used) if last_used else "never", _when(v.revoked_at)) for v, last_used in keys]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
