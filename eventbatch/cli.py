"""The command line: `eventbatch serve | api | worker | migrate | keys | webhooks | replay |
projections | mock-upstream`. Errors a person sees are one line that says what to do."""

from __future__ import annotations

import argparse
import asyncio
import sys

from . import log as logsetup
from .config import SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eventbatch", description="OpenAI-compatible Batch API gateway.")
    p.add_argument("--database-url", help="Postgres URL (EVENTBATCH_DATABASE_URL); unset: embedded Postgres")
    p.add_argument("--data-dir", help="folder of the embedded Postgres (EVENTBATCH_DATA_DIR, default ./.eventbatch)")
    p.add_argument("--log-format", choices=["json", "console"], help="EVENTBATCH_LOG_FORMAT")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def server_opts(sp, with_http: bool, with_worker: bool):
        if with_http:
            sp.add_argument("--host", default="127.0.0.1")
            sp.add_argument("--port", type=int, default=8080)
        if with_worker:
            sp.add_argument("--upstream-url", help="EVENTBATCH_UPSTREAM_URL")
            sp.add_argument("--upstream-concurrency", type=int, help="EVENTBATCH_UPSTREAM_CONCURRENCY")
            sp.add_argument("--config", dest="config_path", help="EVENTBATCH_CONFIG (TOML file of providers)")
        sp.add_argument("--window-seconds", type=float, help="EVENTBATCH_WINDOW_SECONDS")

    server_opts(sub.add_parser("serve", help="API and worker in one process"), True, True)
    server_opts(sub.add_parser("api", help="the HTTP API only"), True, False)
    wk = sub.add_parser("worker", help="the worker only")
    server_opts(wk, False, True)
    wk.add_argument("--host", default="127.0.0.1", help="address of --metrics-port")
    wk.add_argument("--metrics-port", dest="port", type=int, help="serve /metrics, /healthz, /readyz on this port")
    sub.add_parser("migrate", help="apply database migrations")
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    kc = keys.add_parser("create", help="create an API key for a project; the key is the last line printed")
    kc.add_argument("--project", required=True)
    kl = keys.add_parser("list", help="the keys: id, project, created, last used, revoked (never the key)")
    kl.add_argument("--project", help="only this project's keys")
    kl.add_argument("--json", action="store_true", help="JSON lines")
    kr = keys.add_parser("revoke", help="revoke a key: every running API process refuses it within 5 s")
    kr.add_argument("key_id", help="the key's id (key_…), from `eventbatch keys list`")
    # webhooks (SPEC §12.4): the operator's registry of a project's endpoints
    wh = sub.add_parser("webhooks", help="webhook endpoints told when a project's batches end").add_subparsers(
        dest="webhooks_command", required=True)
    wa = wh.add_parser("add", help="register an endpoint; its signing secret is the last line printed")
    wa.add_argument("--project", required=True, help="the project whose batches it hears of")
    wa.add_argument("--url", required=True, help="where to POST the events (http or https)")
    wa.add_argument("--events", help="comma-separated: batch.completed, batch.failed, batch.cancelled, "
                                     "batch.expired (default: all four)")
    wl = wh.add_parser("list", help="the registered endpoints (never their secrets)")
    wl.add_argument("--project", help="only this project's")
    wr = wh.add_parser("remove", help="remove an endpoint; its pending deliveries are dropped")
    wr.add_argument("endpoint_id", metavar="ID")
    rp = sub.add_parser("replay", help="a batch's events in order, for audits")
    rp.add_argument("batch_id")
    rp.add_argument("--json", action="store_true", help="JSON lines")
    rp.add_argument("--requests", action="store_true", help="include every per-request event")
    pr = sub.add_parser("projections", help="views of the log").add_subparsers(dest="projections_command",
                                                                              required=True)
    rb = pr.add_parser("rebuild", help="rebuild every view from the log")
    rb.add_argument("--verify", action="store_true", help="compare instead of replacing; exit 1 on a difference")
    mu = sub.add_parser("mock-upstream", help="a fake OpenAI-compatible provider",
                        description="A fake OpenAI-compatible provider for tests and benchmarks. Every "
                                    "setting can also be changed while it runs: POST a JSON object of them "
                                    "to <control URL>/_mock/config.")
    mu.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    mu.add_argument("--port", type=int, default=8081, help="the provider's port, /v1 (default: %(default)s)")
    mu.add_argument("--control-port", type=int, default=0,
                    help="port of the /_mock control routes, reachable during an outage; 0 picks a free "
                         "one, printed at start (default: %(default)s)")
    mu.add_argument("--latency-ms", type=float, default=0.0,
                    help="delay before every answer, in milliseconds (default: %(default)s)")
    mu.add_argument("--fail-rate", type=float, default=0.0,
                    help="fraction of requests answered 500/502/503 at random (default: %(default)s)")
    mu.add_argument("--rate-limit-rate", type=float, default=0.0,
                    help="fraction of requests answered 429 at random (default: %(default)s)")
    mu.add_argument("--max-in-flight", type=int, metavar="N",
                    help="answer at most N requests at once; one more gets 429 at once (default: no limit)")
    mu.add_argument("--rate-limit-for", dest="rate_limit_seconds", type=float, default=0.0, metavar="SECONDS",
                    help="answer every request 429 for SECONDS from --rate-limit-after (default: %(default)s, "
                         "never)")
    mu.add_argument("--rate-limit-after", type=float, default=0.0, metavar="SECONDS",
                    help="start of the --rate-limit-for window, in seconds after start (default: %(default)s)")
    mu.add_argument("--outage-after", type=float, default=0.0, metavar="SECONDS",
                    help="start of the --outage-seconds window, in seconds after start (default: %(default)s)")
    mu.add_argument("--outage-seconds", type=float, default=0.0, metavar="SECONDS",
                    help="refuse connections on --port (listening socket closed, open connections dropped) "
                         "for SECONDS from --outage-after; --control-port stays up (default: %(default)s, "
                         "never)")
    retry = mu.add_mutually_exclusive_group()
    retry.add_argument("--retry-after", type=float, metavar="SECONDS",
                       help="every 429 carries `Retry-After: SECONDS` (rounded up to whole seconds) and "
                            "`retry-after-ms: SECONDS*1000` (default: the --retry-after-ms default)")
    retry.add_argument("--retry-after-ms", type=int, default=20, metavar="MS",
                       help="every 429 carries `retry-after-ms: MS` and `Retry-After` in whole seconds, at "
                            "least 1 (default: %(default)s)")
    retry.add_argument("--no-retry-after", action="store_true",
                       help="429s carry neither retry header (default: they carry both)")
    mu.add_argument("--api-key", help="require `Authorization: Bearer <this>` (default: accept any)")
    mu.add_argument("--seed", type=int, help="seed of the random faults (default: a different sequence each run)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "mock-upstream":
            return _mock_upstream(args)
        settings = load_settings(
            database_url=args.database_url, data_dir=args.data_dir, log_format=args.log_format,
            upstream_url=getattr(args, "upstream_url", None),
            upstream_concurrency=getattr(args, "upstream_concurrency", None),
            config_path=getattr(args, "config_path", None),
            window_seconds=getattr(args, "window_seconds", None))
        logsetup.configure(settings.log_format)
        match args.command:
            case "serve" | "api" | "worker":
                from .server import run_server
                return asyncio.run(run_server(settings, args.command, getattr(args, "host", None),
                                              getattr(args, "port", None)))
            case "migrate":
                from .db import migrate_command
                return asyncio.run(migrate_command(settings))
            case "keys":
                from .api_keys import keys_command
                return asyncio.run(keys_command(settings, args))
            case "webhooks":
                from .webhooks import webhooks_command
                return asyncio.run(webhooks_command(settings, args))
            case "replay":
                from .replay import replay
                return asyncio.run(replay(settings, args.batch_id, as_json=args.json, requests=args.requests))
            case "projections":
                from .rebuild import rebuild_command
                return asyncio.run(rebuild_command(settings, verify_only=args.verify))
    except SettingsError as exc:
        print(f"eventbatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _mock_upstream(args) -> int:
    from .mock_upstream import MockListenError, MockSettings, run_mock

    try:
        retry_after_ms = (None if args.no_retry_after else
                          args.retry_after_ms if args.retry_after is None else round(args.retry_after * 1000))
        settings = MockSettings(latency_ms=args.latency_ms, fail_rate=args.fail_rate,
                                rate_limit_rate=args.rate_limit_rate, retry_after_ms=retry_after_ms,
                                api_key=args.api_key, seed=args.seed, max_in_flight=args.max_in_flight,
                                rate_limit_after=args.rate_limit_after,
                                rate_limit_seconds=args.rate_limit_seconds, outage_after=args.outage_after,
                                outage_seconds=args.outage_seconds)
    except ValueError as exc:
        raise SettingsError(_as_flags(str(exc))) from exc
    try:
        run_mock(settings, args.host, args.port, args.control_port)
    except MockListenError as exc:
        raise SettingsError(str(exc)) from exc
    return 0


_MOCK_FLAG_OF_FIELD = {"rate_limit_seconds": "--rate-limit-for"}


def _as_flags(message: str) -> str:
    """A MockSettings message names fields (`fail_rate`); on the command line they are flags."""
    import re
    return re.sub(r"`([a-z_]+)`",
                  lambda m: _MOCK_FLAG_OF_FIELD.get(m.group(1), "--" + m.group(1).replace("_", "-")), message)
