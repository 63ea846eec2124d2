"""`python -m benchmarks --quick` end to end: every benchmark runs eventbatch for real (validator,
store, rebuild, API under a drain, serve/api/worker processes), so a broken eventbatch fails
here. A missed target never does: figures on shared machines are not a test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

BENCHMARKS = ["validate", "append", "rebuild", "read_latency", "memory", "output_storage"]


@pytest.mark.slow
@pytest.mark.timeout(320)
def test_quick_benchmarks_run_and_report(tmp_path):
    out = tmp_path / "latest.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", *BENCHMARKS, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    doc = json.loads(out.read_text())
    assert doc["mode"] == "quick" and not doc["failed"]
    assert {"nproc", "memory_gib", "cpu", "python", "postgres", "date"} <= doc["machine"].keys()
    assert list(doc["benchmarks"]) == BENCHMARKS
    for name, result in doc["benchmarks"].items():
        assert result["targets"], name
        for target in result["targets"]:
            assert isinstance(target["met"], bool) and target["target"], (name, target)
    for name in BENCHMARKS:
        assert name in proc.stdout     # the table
