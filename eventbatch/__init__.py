"""eventbatch: a self-hosted, OpenAI-compatible Batch API gateway on an event-sourced Postgres log."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eventbatch")
except PackageNotFoundError:   # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"
