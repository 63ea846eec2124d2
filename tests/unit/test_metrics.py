"""metrics.py on prometheus-client: the names and labels the operations tests and the Grafana
dashboard read, right under serve's two threads, and the multiprocess mode sums processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from eventbatch import metrics

ROOT = Path(__file__).resolve().parents[2]


def test_counts_from_many_threads_add_up():
    before = metrics.HTTP_REQUESTS.values.get(("GET", "/t", "200"), 0.0)

    def hit():
        for _ in range(20_000):
            metrics.HTTP_REQUESTS.inc("GET", "/t", 200)
    threads = [threading.Thread(target=hit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.HTTP_REQUESTS.values[("GET", "/t", "200")] - before == 80_000


def test_the_text_keeps_every_name_and_label():
    metrics.REQUESTS.inc("completed", amount=2)
    metrics.UPSTREAM_ATTEMPTS.inc("200")
    metrics.UPSTREAM_LATENCY.observe(0.3)
    text = metrics._local_text().decode()
    for needle in ('eventbatch_requests_total{outcome="completed"}', 'eventbatch_upstream_attempts_total{status_code="200"}',
                   'eventbatch_upstream_latency_seconds_bucket{le="0.5"}', "eventbatch_upstream_latency_seconds_count",
                   "eventbatch_events_appended_total", "# TYPE eventbatch_http_requests_total counter",
                   "eventbatch_due_statements_total", "eventbatch_claim_statements_total"):
        assert needle in text, needle
    assert "_created" not in text


def test_the_grafana_dashboard_reads_only_metrics_that_exist():
    board = json.loads((ROOT / "ops" / "grafana" / "eventbatch-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs
    known = set(re.findall(r"^# TYPE (\w+) (\w+)", metrics._local_text().decode(), flags=re.M))
    names = {n for n, _ in known} | {"eventbatch_batches", "eventbatch_requests_waiting"}
    histograms = {n for n, kind in known if kind == "histogram"}
    for expr in exprs:
        for used in re.findall(r"\b(eventbatch_\w+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", used) if re.sub(r"_(bucket|sum|count)$", "", used) in \
                histograms else used
            assert base in names, f"{used} in {expr!r} is not a metric eventbatch exports"


def test_multiprocess_mode_sums_the_processes(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR shared by several processes: /metrics shows their sum."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    count = "from eventbatch import metrics; metrics.REQUESTS.inc('completed', amount=5)"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True, timeout=60)
    read = "from eventbatch import metrics; print(metrics._local_text().decode())"
    text = subprocess.run([sys.executable, "-c", read], env=env, check=True, capture_output=True, text=True,
                          timeout=60).stdout
    assert re.search(r'^eventbatch_requests_total\{outcome="completed"\} 10\.0$', text, flags=re.M), text
