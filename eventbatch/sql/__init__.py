"""Every SQL statement of eventbatch, read once from the `.sql` files beside this module.

Each file holds the statements of one concept (events, views, queue, blobs, keys, operations),
each under a header line `-- name --` (procrastinate's convention) with noun_verb names
(`chunk_claim`, `lease_heartbeat`). Python code names a statement, never spells one:

    from eventbatch.sql import Q
    await conn.fetch(Q.chunk_claim, owner, room, lease_seconds)

A name used twice, or a name asked for that no file defines, fails at import or at first use
with the name in the message, so a typo cannot ship.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- ([a-z][a-z0-9_]*) --\s*$")


def parse(text: str, source: str = "<sql>") -> dict[str, str]:
    """The named statements of one file: header line, then everything up to the next header.
    Lines before the first header are the file's own comments."""
    queries: dict[str, str] = {}
    name: str | None = None
    body: list[str] = []

    def close() -> None:
        if name is not None:
            sql = "\n".join(body).strip()
            if not sql:
                raise ValueError(f"{source}: query '{name}' is empty")
            queries[name] = sql

    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            close()
            name, body = m.group(1), []
            if name in queries:
                raise ValueError(f"{source}: query '{name}' is defined twice")
        elif name is not None:
            body.append(line)
    close()
    return queries


class Queries:
    """Attribute access to the named statements: Q.chunk_claim."""

    def __init__(self, queries: dict[str, str]):
        self._queries = queries

    def __getattr__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"no SQL query named '{name}' in eventbatch/sql/*.sql") from None

    def names(self) -> list[str]:
        return sorted(self._queries)


def _load() -> Queries:
    found: dict[str, str] = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, sql in parse(entry.read_text(encoding="utf-8"), entry.name).items():
            if name in found:
                raise ValueError(f"{entry.name}: query '{name}' is also defined in another file")
            found[name] = sql
    return Queries(found)


Q = _load()
