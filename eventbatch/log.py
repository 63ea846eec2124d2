"""structlog set-up: JSON lines when asked or when stderr is not a terminal, console otherwise."""

from __future__ import annotations

import logging
import sys

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
