"""Identifiers in OpenAI's shapes."""

import hashlib
import secrets


def file_id() -> str:
    return "file-" + secrets.token_hex(12)


def batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def request_line_id(batch_id: str, index: int) -> str:
    """Deterministic, so output files materialised again from the log are byte-identical."""
    return "batch_req_" + hashlib.blake2b(f"{batch_id}/{index}".encode(), digest_size=12).hexdigest()


def api_key() -> str:
    return "eb-" + secrets.token_urlsafe(32)


def key_id() -> str:
    """The public name of an API key: in the log, in `keys list`, for `keys revoke`."""
    return "key_" + secrets.token_hex(12)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
