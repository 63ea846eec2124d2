"""eventbatch processes for the benchmarks (mock upstream, serve, api, worker) on loopback, always
stopped at the end, and the resident memory of a process sampled while it works."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventbatch_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBATCH_")}
    env.update(EVENTBATCH_DATABASE_URL=database_url, EVENTBATCH_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return      # it answered
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


class Processes:
    """The processes one benchmark started; close() stops every one of them (use try/finally)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self._procs: list[tuple[subprocess.Popen, object]] = []

    def start(self, name: str, args: list[str], env: dict[str, str], ready_url: str | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}-{len(self._procs)}.log", "wb")
        p = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self._procs.append((p, log))
        if ready_url:
            wait_http(ready_url, p)
        return p

    def mock(self, database_url: str, latency_ms: float = 0.0) -> str:
        """`eventbatch mock-upstream`; returns its base URL (with /v1)."""
        port = free_port()
        self.start("mock", [sys.executable, "-m", "eventbatch", "mock-upstream", "--port", str(port),
                            "--latency-ms", str(latency_ms)], eventbatch_env(database_url),
                   f"http://127.0.0.1:{port}/_mock/stats")
        return f"http://127.0.0.1:{port}/v1"

    def mock_with_control(self, database_url: str, *args: str) -> tuple[str, str]:
        """`eventbatch mock-upstream ARGS` with a control port of its own (up during an outage);
        returns its base URL (with /v1) and its control root (POST {root}/_mock/config)."""
        port, control = free_port(), free_port()
        self.start("mock", [sys.executable, "-m", "eventbatch", "mock-upstream", "--port", str(port),
                            "--control-port", str(control), *args], eventbatch_env(database_url),
                   f"http://127.0.0.1:{control}/_mock/stats")
        return f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{control}"

    def eventbatch(self, role: str, database_url: str, upstream_url: str | None = None,
                   concurrency: int = 64) -> tuple[subprocess.Popen, str | None]:
        """`eventbatch serve | api | worker`; returns the process and the API base URL (None for a worker)."""
        extra = {"EVENTBATCH_UPSTREAM_CONCURRENCY": str(concurrency)}
        if upstream_url:
            extra["EVENTBATCH_UPSTREAM_URL"] = upstream_url
        port = free_port()
        args = [sys.executable, "-m", "eventbatch", role]
        args += ["--metrics-port", str(port)] if role == "worker" else ["--port", str(port)]
        ready = f"http://127.0.0.1:{port}/healthz" if role == "worker" else f"http://127.0.0.1:{port}/v1/files"
        p = self.start(role, args, eventbatch_env(database_url, **extra), ready)
        return p, None if role == "worker" else f"http://127.0.0.1:{port}/v1"

    def close(self) -> None:
        for p, _ in reversed(self._procs):
            if p.poll() is None:
                p.terminate()
        for p, log in reversed(self._procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log.close()
        self._procs.clear()


def peak_rss_of(pid: int) -> int | None:
    """The kernel's high-water mark of the process's resident memory (VmHWM), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's resident set size every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1):
        import psutil
        self._proc = psutil.Process(pid)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._proc.memory_info().rss)
                self.samples += 1
            except Exception:
                return
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
