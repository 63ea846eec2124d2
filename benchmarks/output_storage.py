"""output_storage: what a batch's results cost to keep and to finish (SPEC §12.5) — database
growth ÷ output bytes for 50,000 answers of ~4 KB, and `finalizing_at → completed_at`.

A running batch is made through the commands; its 50,000 outcomes are recorded by the worker's
Recorder (group commit, leases, view updates: the real path), then the real finalizer settles
it (settle_batch: finalizing, then the closing with its output files), and the output file is
read back to the last byte (results.file_pages, what GET /v1/files/{id}/content streams) and
checked against its `bytes`. Growth: pg_database_size from just before the first outcome until
the batch is completed, by table (events with its TOAST and indexes, file blobs, the rest).
The input file holds no bytes (nothing runs the requests), so the growth is the results' alone.

Two kinds of ~4 KB answer, because what they cost depends on how well they compress (large
events are stored as zstd frames, events.stored):
- embeddings: `encoding_format: base64` answers of 768 float32 (4,096 base64 characters) of
  random bytes: nothing in them repeats (Postgres's pglz could not shrink them at all), only
  base64's 4 characters for 3 bytes comes back; the worst case, the figure the target is judged
  on (real embeddings shrink further: their exponent bytes repeat);
- chat: chat completions whose answer is 3,900 characters of English prose (windows of the
  docstrings of some standard-library modules).

The peer is the floor: the output file's own bytes (ratio 1.0×). Before this design the batch's
bodies were stored twice (the events, and the output file materialised into file blobs at the
end, under the batch's lock): run it on an older tree for the before figures.

    python -m benchmarks.output_storage [--requests 50000] [--kind embeddings|chat|both]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import os
import random
import tempfile
import time
from pathlib import Path

import asyncpg
import msgspec

from eventbatch import db, events as ev, projections
from eventbatch.worker.finalizer import settle_batch
from eventbatch.worker.recorder import HeldChunk, Recorder

from .append import CLAIM_ALL, CHUNK_SIZE, running_batch

TARGET_GROWTH = 1.2
TARGET_FINISH_SECONDS = 1.0
_PROSE_MODULES = ("argparse", "asyncio.events", "asyncio.tasks", "collections", "dataclasses", "decimal",
                  "email.message", "functools", "inspect", "json", "logging", "pathlib", "pickle", "shutil",
                  "subprocess", "tarfile", "typing", "unittest.case", "urllib.request", "zipfile")


def _prose() -> str:
    """English prose to answer with: the docstrings of some standard-library modules (real text,
    compressible as real text is; a model's answers are not random letters)."""
    import ast
    import importlib
    parts = []
    for name in _PROSE_MODULES:
        source = inspect.getsource(importlib.import_module(name))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    parts.append(" ".join(doc.split()))
    return " ".join(parts)


class Answers:
    """~4 KB response bodies of one kind, deterministic per index."""

    def __init__(self, kind: str, seed: int = 11):
        self.kind, self.rnd = kind, random.Random(seed)
        self.prose = _prose() if kind == "chat" else ""

    def body(self, i: int) -> bytes:
        rnd = self.rnd
        if self.kind == "embeddings":
            vector = base64.b64encode(rnd.randbytes(768 * 4)).decode()
            tokens = rnd.randint(20, 400)
            return msgspec.json.encode({"object": "list", "data": [{"object": "embedding", "index": 0,
                                                                     "embedding": vector}],
                                        "model": "text-embedding-3-small",
                                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
        start = rnd.randrange(len(self.prose) - 3900)
        text = self.prose[start:start + 3900]
        prompt, completion = rnd.randint(200, 900), len(text) // 4
        return msgspec.json.encode({
            "id": f"chatcmpl-{rnd.getrandbits(116):029x}", "object": "chat.completion", "created": 1_760_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                                 "annotations": []}, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            "service_tier": "default", "system_fingerprint": "fp_560af6e559"})

    def outcome(self, i: int) -> ev.RequestSucceeded:
        return ev.RequestSucceeded(
            index=i, custom_id=f"request-{i:06d}", status_code=200, body=msgspec.Raw(self.body(i)),
            attempts=[ev.Attempt(at=1_760_000_000.0 + i / 1000, duration_ms=self.rnd.randint(300, 3000),
                                 status_code=200)],
            request_id=f"req_{self.rnd.getrandbits(128):032x}", usage=ev.Usage(input_tokens=10, total_tokens=10))


SIZES = """
SELECT pg_database_size(current_database()) AS database,
       pg_total_relation_size('events') AS events,
       pg_relation_size('events') AS events_heap,
       pg_relation_size((SELECT reltoastrelid FROM pg_class WHERE relname = 'events')) AS events_toast,
       pg_indexes_size('events') AS events_indexes,
       pg_total_relation_size('file_blobs') AS file_blobs
"""


async def _sizes(conn) -> dict[str, int]:
    """The sizes on disk, once what was written is flushed there (a CHECKPOINT needs a superuser
    or pg_checkpoint; without it the sizes are read as they are)."""
    try:
        await conn.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError:
        pass
    return dict(await conn.fetchrow(SIZES))


async def _read_output(pool: asyncpg.Pool, file_id: str) -> tuple[int, float]:
    """Every byte of the output file as the content route streams it; (bytes, seconds)."""
    async with pool.acquire() as conn:
        view = projections.decode_file(await conn.fetchval("SELECT doc FROM file_view WHERE id = $1", file_id))
    t0 = time.perf_counter()
    size = 0
    if getattr(view, "results", None):
        from eventbatch import results
        async for page in results.file_pages(pool, view.batch_id, view.results):
            size += len(page)
    else:                                   # a tree from before: stored bytes
        from eventbatch import blobs
        async for piece in blobs.iter_pieces(pool, file_id):
            size += len(piece)
    elapsed = time.perf_counter() - t0
    if size != view.bytes:
        raise RuntimeError(f"output file {file_id}: {size} bytes served, its `bytes` says {view.bytes}")
    return size, elapsed


async def measure(database_url: str, n: int, kind: str) -> dict:
    answers = Answers(kind)
    pool = await db.create_pool(database_url, min_size=2, max_size=6)
    owner = f"benchmark:{os.getpid()}"
    try:
        async with pool.acquire() as conn:
            state = await running_batch(conn, n)
            chunks = sorted((HeldChunk(r) for r in await conn.fetch(CLAIM_ALL, owner, state.id)),
                            key=lambda c: c.first_index)
            before = await _sizes(conn)
        for c in chunks:
            c.remaining = c.count
        done = asyncio.Event()
        recorder = Recorder(pool, owner, on_batch_done=lambda batch_id: done.set(),
                            on_chunk_finished=lambda chunk: None)
        task = asyncio.create_task(recorder.run())
        t0 = time.perf_counter()
        try:
            for start in range(0, n, 1000):       # handed over in slices: bounded memory, as a drain does
                for i in range(start, min(start + 1000, n)):
                    recorder.add(chunks[i // CHUNK_SIZE], answers.outcome(i))
                await recorder.drain()
            await asyncio.wait_for(done.wait(), 60)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        record_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        final = await settle_batch(pool, state.id)
        settle_seconds = time.perf_counter() - t1
        if final is None or final.status != "completed" or final.request_counts.completed != n:
            raise RuntimeError(f"batch {state.id} ended {final and final.status} with "
                               f"{final and final.request_counts}")
        async with pool.acquire() as conn:
            at = {r["type"]: msgspec.json.decode(r["data"])["at"] for r in await conn.fetch(
                "SELECT type, data FROM events WHERE stream = $1 AND type = ANY($2::text[])",
                f"batch-{state.id}", ["batch_finalizing", "batch_completed"])}
            after = await _sizes(conn)
        out_bytes, read_seconds = await _read_output(pool, final.output_file_id)
    finally:
        await pool.close()
    growth = {k: after[k] - before[k] for k in before}
    return {"kind": kind, "requests": n, "output_bytes": out_bytes, "growth": growth,
            "growth_over_output": growth["database"] / out_bytes,
            "finalizing_to_completed_s": at["batch_completed"] - at["batch_finalizing"],
            "settle_seconds": settle_seconds, "record_seconds": record_seconds,
            "read_mb_per_s": out_bytes / 1e6 / read_seconds}


def run(quick: bool, full: bool, ctx, kinds: tuple[str, ...] = ("embeddings", "chat"), n: int | None = None) -> dict:
    n = n or (5_000 if quick else 50_000)
    results = [asyncio.run(measure(ctx.fresh_database("output_storage"), n, kind)) for kind in kinds]
    rows, figures, targets = [], {"requests": n}, []
    for r in results:
        k = r["kind"]
        g = r["growth"]
        figures.update({
            f"{k}_output_mb": round(r["output_bytes"] / 1e6, 1),
            f"{k}_database_growth_mb": round(g["database"] / 1e6, 1),
            f"{k}_events_growth_mb": round(g["events"] / 1e6, 1),
            f"{k}_file_blobs_growth_mb": round(g["file_blobs"] / 1e6, 1),
            f"{k}_events_heap_toast_indexes_mb": [round(g[x] / 1e6, 1) for x in
                                                  ("events_heap", "events_toast", "events_indexes")],
            f"{k}_growth_over_output": round(r["growth_over_output"], 2),
            f"{k}_finalizing_to_completed_s": round(r["finalizing_to_completed_s"], 3),
            f"{k}_settle_call_s": round(r["settle_seconds"], 3),
            f"{k}_record_events_per_s": round(n / r["record_seconds"]),
            f"{k}_output_read_mb_per_s": round(r["read_mb_per_s"]),
        })
        rows.append({"figure": f"database growth ÷ output bytes, {n:,} × ~4 KB {k} answers",
                     "eventbatch": r["growth_over_output"], "peer": 1.0, "ratio": r["growth_over_output"],
                     "target": f"≤ {TARGET_GROWTH}×" if k == "embeddings" else "",
                     "met": r["growth_over_output"] <= TARGET_GROWTH if k == "embeddings" else None})
        rows.append({"figure": f"finalizing_at → completed_at, ms ({k})",
                     "eventbatch": r["finalizing_to_completed_s"] * 1000,
                     "target": f"≤ {TARGET_FINISH_SECONDS * 1000:,.0f} ms",
                     "met": r["finalizing_to_completed_s"] <= TARGET_FINISH_SECONDS})
        rows.append({"figure": f"output file read from the log, MB/s ({k})", "eventbatch": r["read_mb_per_s"]})
        if k == "embeddings":
            targets += [{"target": f"database growth ÷ output ≤ {TARGET_GROWTH}×", "value": round(r["growth_over_output"], 2),
                         "met": r["growth_over_output"] <= TARGET_GROWTH},
                        {"target": f"finalizing_at → completed_at ≤ {TARGET_FINISH_SECONDS:g} s",
                         "value": round(r["finalizing_to_completed_s"], 3),
                         "met": r["finalizing_to_completed_s"] <= TARGET_FINISH_SECONDS}]
    return {"name": "output_storage", "figures": figures, "rows": rows, "targets": targets,
            "notes": (f"{n:,} outcomes recorded by the worker's Recorder, the batch settled by the real finalizer, "
                      "the output file read back through results.file_pages and checked against its `bytes`; "
                      "growth is pg_database_size after a CHECKPOINT, from before the first outcome to completed. "
                      "embeddings: base64 vectors of random bytes (only base64's 4/3 compresses: the judged case); "
                      "chat: English prose. Peer: the output bytes themselves.")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.output_storage")
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--kind", choices=("embeddings", "chat", "both"), default="both")
    a = p.parse_args(argv)
    from eventbatch import log
    from .context import Context
    log.configure("console", level=30)
    kinds = ("embeddings", "chat") if a.kind == "both" else (a.kind,)
    with tempfile.TemporaryDirectory() as t:
        ctx = Context(Path(t))
        try:
            res = run(False, False, ctx, kinds=kinds, n=a.requests)
        finally:
            ctx.close()
    for row in res["rows"]:
        print(f"{row['figure']}: {row['eventbatch']:.3f}" + (f"  (target {row['target']}, met: {row['met']})"
                                                              if row.get("target") else ""))
    print({k: v for k, v in res["figures"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
