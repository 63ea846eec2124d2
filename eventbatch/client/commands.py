"""`eventbatch batch submit|list|get|cancel|watch|download|retry`: the parser and each command.

What a command prints for people goes to stdout (a result) and stderr (progress, errors); with
--json, stdout carries only JSON, one document per command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..batch import ENDPOINTS
from ..config import DEFAULT_BASE_URL
from .progress import TERMINAL, Progress, counts
from .session import ClientError, open_client, plain_errors

if TYPE_CHECKING:   # openai takes a second to import: only the batch commands that run need it
    import openai
    from openai.types import Batch

SUCCESS = "completed"   # the one ending that exits 0



def _client_options(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    """On `batch` (defaults) and again on each of its subcommands (SUPPRESS: given before or after)."""
    def default(value):
        return value if top else argparse.SUPPRESS
    p.add_argument("--base-url", default=default(None), metavar="URL",
                   help=f"the eventbatch API, including /v1 (default: $EVENTBATCH_BASE_URL, else {DEFAULT_BASE_URL})")
    p.add_argument("--api-key", default=default(None), metavar="KEY",
                   help="the project's API key; prefer the variable, a command line is visible to other users "
                        "(default: $EVENTBATCH_API_KEY)")
    p.add_argument("--json", action="store_true", default=default(False),
                   help="print JSON for scripts instead of text (default: text)")
    p.add_argument("--timeout", type=float, default=default(60.0), metavar="SECONDS",
                   help="how long one API call may take (default: 60)")


def _follow_options(p: argparse.ArgumentParser, *, wait_flag: bool) -> None:
    if wait_flag:
        p.add_argument("--wait", action="store_true",
                       help="follow the batch with a progress bar until it ends, then download its files into "
                            "--out (default: return once it is created)")
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                   help="folder for the output and error files (default: the current folder)")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between two looks at the batch while following it (default: %(default)s)")


def add_batch_parser(sub) -> None:
    b = sub.add_parser("batch", help="a client of the API: submit a file, follow it, download the results",
                       description="A client of an eventbatch API (EVENTBATCH_BASE_URL, EVENTBATCH_API_KEY): "
                                   "submit a file, follow it with a progress bar, download the results.")
    _client_options(b, top=True)
    bs = b.add_subparsers(dest="batch_command", required=True, metavar="BATCH_COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sp = bs.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".")
        _client_options(sp)
        return sp

    submit = command("submit", "upload a JSONL file of requests and create a batch of it")
    submit.add_argument("file", type=Path, metavar="FILE", help="the JSONL input file, one request per line")
    submit.add_argument("--endpoint", choices=ENDPOINTS, metavar="ENDPOINT",
                        help="the endpoint of every request, one of " + ", ".join(ENDPOINTS)
                             + " (default: the url of the file's first line)")
    submit.add_argument("--metadata", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="metadata to attach, up to 16 pairs; repeat or list several (default: none)")
    _follow_options(submit, wait_flag=True)
    ls = command("list", "the project's batches, newest first")
    ls.add_argument("--limit", type=int, default=20, help="how many to list, 1 to 100 (default: %(default)s)")
    ls.add_argument("--after", metavar="BATCH_ID", help="list those older than this one (default: the newest)")
    for name, help in (("get", "one batch: status, counts, usage, every timestamp"),
                       ("cancel", "cancel a batch; what finished is kept")):
        command(name, help).add_argument("batch_id", metavar="ID", help="the batch")
    watch = command("watch", "follow a batch with a progress bar until it ends")
    watch.add_argument("batch_id", metavar="ID", help="the batch")
    watch.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                       help="seconds between two looks at the batch (default: %(default)s)")
    download = command("download", "download a finished batch's output and error files")
    download.add_argument("batch_id", metavar="ID", help="the batch")
    download.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                          help="folder for the files (default: the current folder)")
    retry = command("retry", "a new batch of the requests of a finished batch that failed")
    retry.add_argument("batch_id", metavar="ID", help="the finished batch whose failed requests to run again")
    _follow_options(retry, wait_flag=True)


def run_batch_command(args: argparse.Namespace) -> int:
    try:
        client, settings = open_client(args.base_url, args.api_key, args.timeout)
        with plain_errors(settings.base_url):
            return _COMMANDS[args.batch_command](client, args)
    except ClientError as exc:
        print(f"eventbatch: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("eventbatch: stopped; the batch itself goes on (`eventbatch batch watch ID` follows it again).",
              file=sys.stderr)
        return 130


# --- the commands ----------------------------------------------------------------------------

def _submit(client: openai.OpenAI, args) -> int:
    endpoint = args.endpoint or _endpoint_of(args.file)
    metadata = _metadata(args.metadata)
    try:
        with args.file.open("rb") as f:
            uploaded = client.files.create(file=(args.file.name, f), purpose="batch")
    except OSError as exc:
        raise ClientError(f"cannot read {args.file}: {exc.strerror}.", status=2) from None
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h",
                                  **({"metadata": metadata} if metadata else {}))
    return _created(client, args, batch, f"submitted {batch.id} ({batch.status}) from {args.file} as "
                                          f"{uploaded.id}")


def _retry(client: openai.OpenAI, args) -> int:
    from openai.types import Batch
    batch = client.post(f"/batches/{args.batch_id}/retry", cast_to=Batch, body={})
    return _created(client, args, batch, f"retrying the failed requests of {args.batch_id} as {batch.id}")


def _created(client: openai.OpenAI, args, batch: Batch, line: str) -> int:
    if not args.wait:
        _emit(args, batch.model_dump(), f"{line}; follow it with `eventbatch batch watch {batch.id}`")
        return 0
    print(line, file=sys.stderr)
    batch = _follow(client, batch.id, args.interval)
    written = _download(client, batch, args.out) if batch.output_file_id or batch.error_file_id else {}
    return _ended(args, batch, written)


def _list(client: openai.OpenAI, args) -> int:
    if not 1 <= args.limit <= 100:
        raise ClientError(f"--limit {args.limit} is out of range; give 1 to 100.", status=2)
    page = client.batches.list(limit=args.limit, **({"after": args.after} if args.after else {}))
    items = list(page.data)
    if args.json:
        print(json.dumps({"data": [b.model_dump() for b in items], "has_more": page.has_more}))
        return 0
    if not items:
        print("no batches yet; submit one with `eventbatch batch submit FILE`")
        return 0
    rows = [("ID", "STATUS", "DONE/TOTAL", "FAILED", "CREATED", "ENDPOINT")]
    for b in items:
        done, total, failed = counts(b)
        rows.append((b.id, b.status, f"{done}/{total}", str(failed), _when(b.created_at), b.endpoint))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    if page.has_more:
        print(f"(more: eventbatch batch list --after {items[-1].id})")
    return 0


def _get(client: openai.OpenAI, args) -> int:
    batch = client.batches.retrieve(args.batch_id)
    _emit(args, batch.model_dump(), _describe(batch))
    return 0


def _cancel(client: openai.OpenAI, args) -> int:
    batch = client.batches.cancel(args.batch_id)
    _emit(args, batch.model_dump(), f"{batch.id} is {batch.status}; what finished is kept "
                                    f"(`eventbatch batch watch {batch.id}` follows it to the end)")
    return 0


def _watch(client: openai.OpenAI, args) -> int:
    print(f"following {args.batch_id} until it ends (Ctrl-C stops following, not the batch)", file=sys.stderr)
    batch = _follow(client, args.batch_id, args.interval)
    return _ended(args, batch, {})


def _download_command(client: openai.OpenAI, args) -> int:
    batch = client.batches.retrieve(args.batch_id)
    if not (batch.output_file_id or batch.error_file_id):
        if batch.status in TERMINAL:
            raise ClientError(f"{batch.id} ended {batch.status} without output or error files"
                              f"{': ' + _errors(batch) if batch.errors and batch.errors.data else ''}.")
        raise ClientError(f"{batch.id} is {batch.status}: its files exist once it ends; "
                          f"`eventbatch batch watch {batch.id}` follows it until then.")
    written = _download(client, batch, args.out)
    if args.json:
        print(json.dumps({"id": batch.id, "status": batch.status,
                          "files": {k: str(p) for k, (p, _) in written.items()}}))
    else:
        for kind, (path, lines) in written.items():
            print(f"wrote {path} ({lines} {kind} line{'s' if lines != 1 else ''})")
    return 0


_COMMANDS = {"submit": _submit, "list": _list, "get": _get, "cancel": _cancel, "watch": _watch,
             "download": _download_command, "retry": _retry}


# --- following, downloading, showing ---------------------------------------------------------

def _follow(client: openai.OpenAI, batch_id: str, interval: float) -> Batch:
    with Progress() as progress:
        while True:
            batch = client.batches.retrieve(batch_id)
            progress.update(batch)
            if batch.status in TERMINAL:
                return batch
            time.sleep(max(interval, 0.05))


def _download(client: openai.OpenAI, batch: Batch, out: Path) -> dict[str, tuple[Path, int]]:
    """The output and error files into `out`, as <batch>_output.jsonl and <batch>_error.jsonl
    (the server's names), streamed to disk and renamed into place when whole."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClientError(f"cannot create {out}: {exc.strerror}; choose another --out.", status=2) from None
    written = {}
    for kind, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id)):
        if not file_id:
            continue
        path = out / f"{batch.id}_{kind}.jsonl"
        part = path.with_name(path.name + ".part")
        lines = 0
        try:
            with client.files.with_streaming_response.content(file_id) as response, part.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
                    lines += chunk.count(b"\n")
            part.replace(path)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise ClientError(f"cannot write {path}: {exc.strerror}; choose another --out.") from None
        written[kind] = (path, lines)
    return written


def _ended(args, batch: Batch, written: dict[str, tuple[Path, int]]) -> int:
    done, total, failed = counts(batch)
    if args.json:
        print(json.dumps({**batch.model_dump(), "downloaded": {k: str(p) for k, (p, _) in written.items()}}))
    else:
        print(f"{batch.id} {batch.status}: {done - failed} succeeded, {failed} failed of {total}"
              + (f"; {batch.usage.total_tokens:,} tokens" if batch.usage and batch.usage.total_tokens else ""))
        for kind, (path, lines) in written.items():
            print(f"wrote {path} ({lines} {kind} line{'s' if lines != 1 else ''})")
    if batch.status == SUCCESS:
        return 0
    reason = f": {_errors(batch)}" if batch.errors and batch.errors.data else ""
    print(f"eventbatch: error: {batch.id} ended {batch.status}{reason}", file=sys.stderr)
    return 1


def _emit(args, obj: dict, text: str) -> None:
    print(json.dumps(obj) if args.json else text)


def _when(ts: int | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _errors(batch: Batch) -> str:
    shown = []
    for e in (batch.errors.data or [])[:3]:
        # Our messages begin "Line 3: …" already (OpenAI's do not): the line is said once.
        named = e.line and e.message.lower().startswith(f"line {e.line}:")
        where = f"line {e.line}: " if e.line and not named else ""
        shown.append(f"{where}{e.message} ({e.code})" if e.code else f"{where}{e.message}")
    more = len(batch.errors.data) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


# Every timestamp of the batch object, in the order a batch meets them.
TIMESTAMPS = ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at", "cancelling_at",
              "cancelled_at", "expired_at", "expires_at")


def _describe(b: Batch) -> str:
    done, total, failed = counts(b)
    lines = [f"{b.id}  {b.status}",
             f"  endpoint      {b.endpoint}" + (f"   model {b.model}" if b.model else ""),
             f"  requests      {total} total, {done - failed} succeeded, {failed} failed, {total - done} to go"]
    if b.usage:
        lines.append(f"  usage         {b.usage.input_tokens:,} input + {b.usage.output_tokens:,} output = "
                     f"{b.usage.total_tokens:,} tokens")
    lines.append(f"  input file    {b.input_file_id}")
    if b.output_file_id or b.error_file_id:
        lines.append(f"  output file   {b.output_file_id or '-'}   error file {b.error_file_id or '-'}")
    for field in TIMESTAMPS:
        ts = getattr(b, field)
        label = "expires" if field == "expires_at" else field.removesuffix("_at").replace("_", " ")
        if ts is not None:
            lines.append(f"  {label:<13} {_when(ts)}")
    if b.metadata:
        lines.append("  metadata      " + ", ".join(f"{k}={v}" for k, v in b.metadata.items()))
    if b.errors and b.errors.data:
        lines.append(f"  errors        {_errors(b)}")
    return "\n".join(lines)


def _endpoint_of(path: Path) -> str:
    """The url of the file's first request line: every line of a batch has the same one."""
    try:
        with path.open("rb") as f:
            for raw in f:
                if raw.strip():
                    break
            else:
                raise ClientError(f"{path} is empty; give a JSONL file of requests.", status=2)
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}.", status=2) from None
    try:
        url = json.loads(raw).get("url")
    except (ValueError, AttributeError):
        url = None
    if url not in ENDPOINTS:
        raise ClientError(f"cannot tell the endpoint from the first line of {path}; pass --endpoint "
                          f"(one of {', '.join(ENDPOINTS)}).", status=2)
    return url


def _metadata(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClientError(f"--metadata {pair!r} is not KEY=VALUE.", status=2)
        out[key] = value
    return out
