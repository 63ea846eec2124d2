"""structlog set-up: JSON lines when asked or when stderr is not a terminal, console otherwise."""

from __future__ import annotations

import logging
import sys
import warnings

import structlog


def configure(fmt: str | None = None, level: int = logging.INFO) -> None:
    fmt = fmt or ("console" if sys.stderr.isatty() else "json")
    renderer = structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # A library's warning printed raw would be a line that is not JSON in a JSON log. aiohttp
    # warns of a malformed part header (Content-Disposition) that api/uploads.py answers with a 400
    # anyway: one structured line instead.
    warnings.showwarning = _warning_as_log


def _warning_as_log(message, category, filename, lineno, file=None, line=None) -> None:
    structlog.get_logger("eventbatch").warning("python_warning", category=category.__name__,
                                               message=str(message)[:500], where=f"{filename}:{lineno}")
