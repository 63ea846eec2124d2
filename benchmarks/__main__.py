"""python -m benchmarks [--quick] [--full] [--only NAME ...] [--out PATH]

Runs the benchmarks, each next to its peer in the same run, prints a table and writes the
figures with the machine they came from to benchmarks/results/latest.json (or --out).
Absolute figures are context; ratios to the peers are the result (the machines are shared).

--quick   small sizes, under two minutes: CI runs it to prove eventbatch works end to end
--full    more rounds (and whatever the drain benchmark adds in its full mode)

The exit status is 1 only when a benchmark raised (eventbatch is broken), never because a
target was missed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCHMARKS = ("validate", "drain", "append", "rebuild", "read_latency", "memory", "output_storage", "fairness",
              "open_batches", "outage", "adaptive")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"


def _fmt(x) -> str:
    if x is None or x == "":
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.2f}"
    return str(x)


def rows_of(result: dict) -> list[dict]:
    """The table rows of a result; results without their own rows show their targets."""
    if result.get("error"):
        return [{"figure": "raised " + result["error"].strip().splitlines()[-1][:60]}]
    if result.get("skipped"):
        return [{"figure": "skipped: " + result["skipped"]}]
    if result.get("rows"):
        return result["rows"]
    return [{"figure": t.get("target"), "eventbatch": t.get("value"), "met": t.get("met")}
            for t in result.get("targets", [])] or [{"figure": "(no targets)"}]


def table(results: list[dict]) -> str:
    head = ("benchmark", "figure", "eventbatch", "peer", "ratio", "target", "met")
    lines = [head]
    for r in results:
        for i, row in enumerate(rows_of(r)):
            ratio = row.get("ratio")
            ratio_s = "—" if ratio is None else f"{ratio:.2f}×" if isinstance(ratio, (int, float)) else str(ratio)
            lines.append((r["name"] if i == 0 else "", str(row.get("figure", "")), _fmt(row.get("eventbatch")),
                          _fmt(row.get("peer")), ratio_s, row.get("target") or "—", _fmt(row.get("met"))))
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _jsonable(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def run_one(name: str, quick: bool, full: bool, ctx) -> dict:
    t0 = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.{name}")
        if callable(getattr(module, "run", None)):
            result = dict(module.run(quick, full, ctx))
            result.setdefault("name", name)
        else:
            note = f"benchmarks/{name}.py has no run(quick, full, ctx) yet"
            print(f"   {name}: skipped ({note})", flush=True)
            result = {"name": name, "skipped": note}
    except Exception:
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        result = {"name": name, "error": text}
    finally:
        try:
            ctx.drop_databases()
        except Exception:
            traceback.print_exc()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def run_alone(run, quick: bool, full: bool) -> int:
    """`python -m benchmarks.NAME`: one benchmark's run() in a context of its own, its table
    and notes printed, its databases dropped."""
    from .context import Context
    with tempfile.TemporaryDirectory() as t:
        ctx = Context(Path(t))
        try:
            res = run(quick, full, ctx)
        finally:
            ctx.drop_databases()
            ctx.close()
    print(table([res]))
    print("\n" + res["notes"])
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    p.add_argument("--quick", action="store_true", help="small sizes, under two minutes (CI)")
    p.add_argument("--full", action="store_true", help="more rounds, bigger runs")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                   help=f"run only these ({', '.join(BENCHMARKS)})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write the JSON (default {DEFAULT_OUT})")
    a = p.parse_args(argv)
    if a.quick and a.full:
        p.error("--quick and --full do not go together")
    names = [n for n in BENCHMARKS if n in (a.only or BENCHMARKS)]

    from eventbatch import log
    log.configure("console", level=logging.WARNING)    # the commands log every batch they create
    from .context import Context

    mode = "quick" if a.quick else "full" if a.full else "default"
    started = time.perf_counter()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="eventbatch-bench-") as t:
        ctx = Context(Path(t))
        try:
            m = ctx.machine
            print(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, "
                  f"Postgres {m['postgres']}; mode {mode}", flush=True)
            for name in names:
                print(f"== {name}", flush=True)
                result = run_one(name, a.quick, a.full, ctx)
                results.append(result)
                state = "FAILED" if result.get("error") else "skipped" if result.get("skipped") else "done"
                print(f"   {name}: {state} in {result['seconds']}s", flush=True)
        finally:
            ctx.close()
    print()
    print(table(results))
    failed = [r["name"] for r in results if r.get("error")]
    for r in results:
        if r.get("notes"):
            print(f"\n{r['name']}: {r['notes']}")
    doc = {"machine": ctx.machine, "mode": mode, "command": "python -m benchmarks " + " ".join(argv or sys.argv[1:]),
           "seconds": round(time.perf_counter() - started, 1), "failed": failed,
           "benchmarks": {r["name"]: r for r in results}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(_jsonable(doc), indent=1, ensure_ascii=False) + "\n")
    print(f"\nwrote {a.out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
