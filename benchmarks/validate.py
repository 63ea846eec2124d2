"""validate: eventbatch's streaming Validator next to the usual way, over a 50,000-line, ~100 MB
chat-completions input file.

The usual way is what most batch runners do: `json.loads` per line, then a pydantic model of
the line (custom_id, method, url, body; body a model with `model: str`, `messages: list[...]`,
extra fields allowed), plus the same file-level checks (duplicate custom_id, url, one model,
no streaming). It streams the file line by line and keeps nothing per line (holding the models,
as many runners do, would cost it far more memory).

eventbatch is fed the file in 1 MiB pieces, as it is from storage (files.iter_pieces). Each
contender runs in a subprocess of its own, so that its peak resident memory (the kernel's
ru_maxrss of that process: interpreter and imports included) is its own; the time is measured
inside the subprocess around the reading and validating only. MB are 10^6 bytes.

    python -m benchmarks.validate [--lines 50000]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from .processes import ROOT

LINES = 50_000
QUICK_LINES = 10_000
LINE_BYTES = 2_000          # 50,000 lines → ~100 MB
PIECE = 1 << 20
ENDPOINT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"

_WORDS = ("the of and to in is was for on that with as by at from this be are an or it not which "
          "answer question summarise translate explain document model batch request response data "
          "evaluation score between following paragraph context customer support ticket refund order "
          "shipping invoice account password reset error message stack trace function return value "
          "café naïve résumé — “quoted” 東京 ünïcödé").split()


def write_input_file(path: Path, lines: int, seed: int = 7) -> int:
    """A chat-completions batch input file of `lines` lines of ~LINE_BYTES each; returns its size."""
    rnd = random.Random(seed)
    size = 0
    with open(path, "wb") as f:
        buf: list[bytes] = []
        for i in range(lines):
            system = " ".join(rnd.choices(_WORDS, k=60))
            user = " ".join(rnd.choices(_WORDS, k=rnd.randint(150, 250)))
            line = {"custom_id": f"request-{i:06d}", "method": "POST", "url": ENDPOINT,
                    "body": {"model": MODEL,
                             "messages": [{"role": "system", "content": "You are a careful assistant. " + system},
                                          {"role": "user", "content": f"Ticket {i}:\n{user}"}],
                             "max_tokens": 256, "temperature": 0.2}}
            buf.append(json.dumps(line, ensure_ascii=False).encode() + b"\n")
            if len(buf) == 500:
                size += f.write(b"".join(buf))
                buf.clear()
        size += f.write(b"".join(buf))
    return size


# --- the contenders, each run in a subprocess of its own -------------------------------------

def _eventbatch(path: str) -> dict:
    from eventbatch.validation import Validator
    validator = Validator(ENDPOINT)
    t0 = _now()
    with open(path, "rb", buffering=0) as f:
        while piece := f.read(PIECE):
            validator.feed(piece)
    result = validator.finish()
    return {"seconds": _now() - t0, "requests": result.total, "errors": result.error_count}


def _usual(path: str, parse_json: bool = True) -> dict:
    from typing import Any, Literal

    from pydantic import BaseModel, ConfigDict, ValidationError

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")
        role: str
        content: str | list[dict[str, Any]] | None = None

    class ChatBody(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: str
        messages: list[Message]

    class RequestLine(BaseModel):
        custom_id: str
        method: Literal["POST"]
        url: str
        body: ChatBody

    t0 = _now()
    seen: set[str] = set()
    model = None
    requests = errors = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            requests += 1
            try:
                req = (RequestLine.model_validate(json.loads(line)) if parse_json
                       else RequestLine.model_validate_json(line))
            except (ValueError, ValidationError):   # json.JSONDecodeError is a ValueError
                errors += 1
                continue
            extra = req.body.model_extra or {}
            if req.custom_id in seen or req.url != ENDPOINT or extra.get("stream") is True \
                    or (model is not None and req.body.model != model):
                errors += 1
            seen.add(req.custom_id)
            model = model or req.body.model
    return {"seconds": _now() - t0, "requests": requests, "errors": errors}


def _now() -> float:
    import time
    return time.perf_counter()


CONTENDERS = {"eventbatch": _eventbatch, "usual": _usual,
              "pydantic_json": lambda p: _usual(p, parse_json=False)}


def _child(contender: str, path: str) -> None:
    import resource
    # Import what the contender needs before measuring; the peak still counts the imports.
    import eventbatch.validation  # noqa: F401
    if contender != "eventbatch":
        import pydantic  # noqa: F401
    result = CONTENDERS[contender](path)
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))


def run_contender(contender: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.validate", "--child", contender, str(path)],
                         capture_output=True, check=True, timeout=600, cwd=ROOT)
    return json.loads(out.stdout)


# --- the benchmark ----------------------------------------------------------------------------

def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def run(quick: bool, full: bool, ctx) -> dict:
    lines = QUICK_LINES if quick else LINES
    rounds = 1 if quick else 5 if full else 3
    path = ctx.tmp / f"validate-{lines}.jsonl"
    size = write_input_file(path, lines)
    try:
        eb, usual = [], []
        for _ in range(rounds):       # alternating, so both see the same noise
            eb.append(run_contender("eventbatch", path))
            usual.append(run_contender("usual", path))
        fast_pydantic = run_contender("pydantic_json", path)
    finally:
        path.unlink(missing_ok=True)
    for r in eb + usual + [fast_pydantic]:
        if r["requests"] != lines or r["errors"]:
            raise RuntimeError(f"validation of a valid {lines}-line file gave {r}")
    mb = size / 1e6
    eb_s, usual_s = _median([r["seconds"] for r in eb]), _median([r["seconds"] for r in usual])
    eb_mbs, usual_mbs = mb / eb_s, mb / usual_s
    eb_peak = max(r["peak_rss"] for r in eb)
    usual_peak = max(r["peak_rss"] for r in usual)
    ratio = usual_s / eb_s
    return {
        "name": "validate",
        "figures": {
            "file_mb": round(mb, 1), "lines": lines, "rounds": rounds,
            "eventbatch_seconds": round(eb_s, 3), "eventbatch_mb_per_s": round(eb_mbs, 1),
            "usual_seconds": round(usual_s, 3), "usual_mb_per_s": round(usual_mbs, 1),
            "speedup": round(ratio, 2),
            "eventbatch_peak_rss_mb": round(eb_peak / 1e6, 1), "usual_peak_rss_mb": round(usual_peak / 1e6, 1),
            "eventbatch_peak_over_file": round(eb_peak / size, 3),
            "pydantic_model_validate_json_mb_per_s": round(mb / fast_pydantic["seconds"], 1),
            "eventbatch_all_seconds": [round(r["seconds"], 3) for r in eb],
            "usual_all_seconds": [round(r["seconds"], 3) for r in usual],
        },
        "rows": [
            {"figure": "MB/s", "eventbatch": eb_mbs, "peer": usual_mbs, "ratio": ratio,
             "target": "≥ 300 MB/s", "met": eb_mbs >= 300},
            {"figure": "MB/s, vs the usual way", "eventbatch": eb_mbs, "peer": usual_mbs, "ratio": ratio,
             "target": "ratio ≥ 5×", "met": ratio >= 5},
            {"figure": f"peak RSS, MB (file {mb:.0f} MB)", "eventbatch": eb_peak / 1e6, "peer": usual_peak / 1e6,
             "ratio": eb_peak / usual_peak, "target": f"≤ 1.5× the file ({1.5 * mb:.0f} MB)",
             "met": eb_peak <= 1.5 * size},
        ],
        "targets": [
            {"target": "≥ 300 MB/s", "value": round(eb_mbs, 1), "met": eb_mbs >= 300},
            {"target": "≥ 5× the usual way (json.loads + pydantic per line)", "value": round(ratio, 2),
             "met": ratio >= 5},
            {"target": "peak memory ≤ 1.5× the file", "value": round(eb_peak / size, 3),
             "met": eb_peak <= 1.5 * size},
        ],
        "notes": (f"{lines:,}-line chat-completions file of {mb:.1f} MB read from disk (page cache) in 1 MiB "
                  f"pieces; median of {rounds} alternating rounds, each contender in its own subprocess. "
                  "Peak memory is the subprocess's ru_maxrss (whole process: interpreter and imports "
                  f"included). For context, pydantic's model_validate_json per line (no json.loads) did "
                  f"{mb / fast_pydantic['seconds']:.0f} MB/s."),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.validate")
    p.add_argument("--lines", type=int, default=LINES)
    p.add_argument("--child", nargs=2, metavar=("CONTENDER", "PATH"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        _child(*a.child)
        return 0
    with tempfile.TemporaryDirectory() as t:
        path = Path(t) / "input.jsonl"
        size = write_input_file(path, a.lines)
        for contender in ("eventbatch", "usual"):
            r = run_contender(contender, path)
            print(f"{contender}: {size / 1e6 / r['seconds']:,.0f} MB/s, peak RSS {r['peak_rss'] / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
