"""Process-local metrics in Prometheus' text format. Counters and histograms live in the process
that does the work (the API process for HTTP, the worker for upstream calls and outcomes); gauges
that describe the whole system (batches by status, requests waiting) are read from the database
at scrape time, so every scrape target agrees on them."""

from __future__ import annotations

import bisect
from typing import Iterable

import asyncpg

from .batch import OPEN, STATUSES
from .projections import decode_batch
from .sql import Q


def _labels(names: tuple[str, ...], values: tuple) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for n, v in zip(names, values))
    return "{" + inner + "}"


class Counter:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, labels
        self.values: dict[tuple, float] = {}

    def inc(self, *labels, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        if not self.values and not self.label_names:
            yield f"{self.name} 0"
        for labels, v in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {v:g}"


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        running = 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            yield f'{self.name}_bucket{{le="{bound:g}"}} {running}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {self.sum:g}"
        yield f"{self.name}_count {self.count}"


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
LOCAL = (EVENTS_APPENDED, REQUESTS, UPSTREAM_ATTEMPTS, UPSTREAM_LATENCY, HTTP_REQUESTS, DUE_STATEMENTS,
         CLAIM_STATEMENTS)

async def render(conn: asyncpg.Connection) -> str:
    lines: list[str] = []
    for m in LOCAL:
        lines.extend(m.render())
    counts = {r["status"]: r["n"] for r in await conn.fetch(Q.batch_view_count_by_status)}
    lines.append("# HELP eventbatch_batches Batches by status (all tenants).")
    lines.append("# TYPE eventbatch_batches gauge")
    lines.extend(f'eventbatch_batches{{status="{s}"}} {counts.get(s, 0)}' for s in STATUSES)
    waiting = 0
    for (doc,) in await conn.fetch(Q.batch_view_docs_with_status, sorted(OPEN)):
        rc = decode_batch(doc).request_counts
        waiting += rc.total - rc.completed - rc.failed
    lines.append("# HELP eventbatch_requests_waiting Requests of unfinished batches without an outcome yet.")
    lines.append("# TYPE eventbatch_requests_waiting gauge")
    lines.append(f"eventbatch_requests_waiting {waiting}")
    return "\n".join(lines) + "\n"
