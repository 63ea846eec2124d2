"""The OpenAI client the commands use, and the one line a person sees when anything fails."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

from ..config import ClientSettings, SettingsError, load_client_settings

if TYPE_CHECKING:   # openai is imported where a client is made: it takes a second, and every command parses `batch`
    import openai


class ClientError(Exception):
    """A failure, as the single line to print; `status` is the exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def open_client(base_url: str | None, api_key: str | None, timeout: float) -> tuple[openai.OpenAI, ClientSettings]:
    try:
        settings = load_client_settings(base_url=base_url, api_key=api_key)
    except SettingsError as exc:
        raise ClientError(str(exc), status=2) from None
    if not settings.api_key:
        raise ClientError("no API key: set EVENTBATCH_API_KEY (or pass --api-key); an operator creates one with "
                          "`eventbatch keys create --project NAME`.", status=2)
    # Two retries with backoff on connection errors, 429 and 5xx: a server restarting under a
    # long `watch` is not the end of it.
    import openai   # here, not at import: every eventbatch command parses `batch`'s options, few run it
    client = openai.OpenAI(base_url=settings.base_url, api_key=settings.api_key, max_retries=2, timeout=timeout)
    return client, settings


def _cause(exc: BaseException) -> str:
    """The innermost reason of a connection failure (e.g. 'Connection refused')."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__
    text = str(seen).strip()
    if "] " in text and text.startswith("[Errno"):
        text = text.split("] ", 1)[1]
    return text or type(seen).__name__


@contextlib.contextmanager
def plain_errors(base_url: str) -> Iterator[None]:
    """openai's exceptions and file errors as ClientError lines that say what to do."""
    import openai
    try:
        yield
    except openai.APITimeoutError:
        raise ClientError(f"the eventbatch API at {base_url} did not answer in time; check that it runs, or pass "
                          "a longer --timeout.") from None
    except openai.APIConnectionError as exc:
        raise ClientError(f"cannot reach the eventbatch API at {base_url} ({_cause(exc)}); start it with "
                          "`eventbatch serve`, or point EVENTBATCH_BASE_URL (or --base-url) at it.") from None
    except openai.APIStatusError as exc:
        message = exc.body.get("message") if isinstance(exc.body, dict) else None
        if not message:
            text = exc.response.text.strip().splitlines()
            message = text[0][:200] if text else exc.response.reason_phrase
        hint = ""
        if exc.status_code == 401:
            hint = " (a key works only with the server whose database it was made in)"
        elif exc.status_code == 404 and ("Unknown request URL" in message
                                         or "x-request-id" not in exc.response.headers):
            hint = f" (is {base_url} an eventbatch API, and is the server up to date?)"
        raise ClientError(f"{exc.status_code} from {base_url}: {message}{hint}") from None
    except openai.OpenAIError as exc:
        raise ClientError(f"{type(exc).__name__}: {exc}") from None
