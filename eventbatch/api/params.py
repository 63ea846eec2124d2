"""Text from a request that Postgres will store or compare: ids in the path, query parameters,
JSON strings, filenames. Postgres text cannot hold NUL, and a str with a lone surrogate (what
undecodable bytes become) cannot be encoded at all: both are refused here, as a 400 that names
the parameter, before any SQL sees them."""

from __future__ import annotations

from typing import Mapping

from aiohttp import web

from .errors import bad_request

MAX_ID_CHARS = 256   # ids are about 30 characters; anything far longer names nothing
MAX_POSITION = 2 ** 63 - 1   # positions in the log are Postgres bigint


def storable(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(value: str, param: str, what: str | None = None) -> str:
    if not storable(value):
        raise bad_request(f"{what or repr(param)} must be text without NUL characters or undecodable bytes.",
                          param=param)
    return value


def path_id(request: web.Request, name: str) -> str:
    """An id from the path ({file_id}, {batch_id})."""
    return an_id(request.match_info[name], name)


def an_id(value: str, name: str) -> str:
    """An id the client names (in the path, or a body's input_file_id): not echoed whole when it
    cannot be one."""
    if len(value) > MAX_ID_CHARS:
        raise bad_request(f"'{name}' is {len(value)} characters long; ids are at most {MAX_ID_CHARS}.", param=name)
    return text(value, name)


def query_text(q: Mapping[str, str], name: str) -> str | None:
    """A query parameter; an empty one (`after=`) counts as absent, as clients send it so."""
    value = q.get(name)
    if value is None or value == "":
        return None
    return text(value, name)


def position(raw: str | None) -> int | None:
    """A cursor that is a position in the log (`after=` of the events and results routes): None
    when it is not one. ASCII digits only (str.isdigit admits '²', which int() refuses) and
    within bigint (a larger number cannot even be sent to Postgres): either was a 500. The
    length first: int() refuses a string of over 4,300 digits, with a ValueError (a 500 too)."""
    if raw is None or raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(MAX_POSITION)) or int(raw) > MAX_POSITION:
        return None
    return int(raw)
