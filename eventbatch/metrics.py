"""Metrics in Prometheus' text format, kept by `prometheus-client`.

Counters, histograms and gauges live in the process that does the work (the API for HTTP, the
worker for upstream calls and outcomes); `serve` runs both on two threads, and the library's
values are safe across threads. Figures that describe the whole system (batches by status,
requests waiting) are read from the database at scrape time, so every scrape target agrees on
them (aggregate those with max(), not sum()).

Multi-process deployments: each eventbatch process is a scrape target of its own (Prometheus
adds `instance`). Several processes behind one address can share their figures through the
library's multiprocess mode: set PROMETHEUS_MULTIPROC_DIR to an empty folder that they share
(read by prometheus-client itself, at import); /metrics then sums every live process's values.

The wrappers keep the calls the code makes (`inc(*labels, amount=)`, `set(*labels, value=)`,
`observe(v)`) and add `.values`, this process's figures by label values, for tests."""

from __future__ import annotations

import asyncpg
import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from .batch import OPEN, STATUSES
from .projections import decode_batch
from .sql import Q

# `<name>_created` series double every counter and say nothing an operator reads.
prometheus_client.disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
# The library chose its value store at import from PROMETHEUS_MULTIPROC_DIR: ask it, not the environment.
_MULTIPROCESS = bool(getattr(values.ValueClass, "_multiprocess", False))
if not _MULTIPROCESS:   # per-process figures make no sense summed over processes
    prometheus_client.ProcessCollector(registry=REGISTRY)
    prometheus_client.GCCollector(registry=REGISTRY)


class _Metric:
    def __init__(self, metric, labels: tuple[str, ...]):
        self._metric, self.label_names = metric, labels

    def _child(self, labels: tuple):
        return self._metric.labels(*labels) if self.label_names else self._metric

    @property
    def values(self) -> dict[tuple, float]:
        """This process's figures: label values -> value (a histogram's counts)."""
        out: dict[tuple, float] = {}
        for family in self._metric.collect():
            for sample in family.samples:
                if sample.name.endswith(("_total", "_count")) or sample.name == family.name:
                    out[tuple(sample.labels[n] for n in self.label_names)] = sample.value
        return out


class Counter(_Metric):
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        super().__init__(prometheus_client.Counter(name.removesuffix("_total"), help, labels, registry=REGISTRY),
                         labels)

    def inc(self, *labels, amount: float = 1.0) -> None:
        self._child(labels).inc(amount)


class Gauge(_Metric):
    """A figure of this process that goes up and down (a provider's concurrency, its pause); in
    multiprocess mode the live processes' figures are summed."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        super().__init__(prometheus_client.Gauge(name, help, labels, registry=REGISTRY,
                                                 multiprocess_mode="livesum"), labels)

    def set(self, *labels, value: float) -> None:
        self._child(labels).set(value)


class Histogram(_Metric):
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]):
        super().__init__(prometheus_client.Histogram(name, help, buckets=buckets, registry=REGISTRY), ())

    def observe(self, value: float) -> None:
        self._metric.observe(value)


EVENTS_APPENDED = Counter("eventbatch_events_appended_total", "Events appended to the log by this process.")
REQUESTS = Counter("eventbatch_requests_total", "Batch requests settled by this process, by outcome.", ("outcome",))
UPSTREAM_ATTEMPTS = Counter("eventbatch_upstream_attempts_total",
                            "Upstream attempts by HTTP status code (or 'error' when nothing came back).",
                            ("status_code",))
UPSTREAM_LATENCY = Histogram("eventbatch_upstream_latency_seconds", "Duration of upstream attempts.",
                             (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
HTTP_REQUESTS = Counter("eventbatch_http_requests_total", "API requests by method, route and status.",
                        ("method", "route", "status"))
# What the due-work sweeper and the claimer cost the database (SPEC §11: flat, whatever the number
# of open batches that are not due): statements sent.
DUE_STATEMENTS = Counter("eventbatch_due_statements_total",
                         "Statements the due-work sweeper of this process sent (finding due batches and working them).")
CLAIM_STATEMENTS = Counter("eventbatch_claim_statements_total", "Claims of work chunks this process sent.")
PROVIDER_PAUSED = Gauge("eventbatch_provider_paused",
                        "1 while this worker has paused the provider (it failed every attempt; only probes go to it).",
                        ("provider",))
PROVIDER_CONCURRENCY = Gauge("eventbatch_provider_concurrency",
                             "Requests this worker may have in flight to the provider now (adapted to its 429s, "
                             "at most its configured concurrency).", ("provider",))


class _Snapshot:
    """A collector of figures already read (the database's), for one scrape."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def _local_text() -> bytes:
    if _MULTIPROCESS:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


async def render(conn: asyncpg.Connection) -> str:
    counts = {r["status"]: r["n"] for r in await conn.fetch(Q.batch_view_count_by_status)}
    batches = GaugeMetricFamily("eventbatch_batches", "Batches by status (all tenants).", labels=["status"])
    for s in STATUSES:
        batches.add_metric([s], counts.get(s, 0))
    waiting = 0
    for (doc,) in await conn.fetch(Q.batch_view_docs_with_status, sorted(OPEN)):
        rc = decode_batch(doc).request_counts
        waiting += rc.total - rc.completed - rc.failed
    system = CollectorRegistry(auto_describe=False)
    system.register(_Snapshot([
        batches,
        GaugeMetricFamily("eventbatch_requests_waiting",
                          "Requests of unfinished batches without an outcome yet.", value=waiting)]))
    return (_local_text() + generate_latest(system)).decode()
