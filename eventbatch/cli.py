"""The command line: `eventbatch serve | api | worker | migrate | keys | webhooks | replay |
projections | batch | mock-upstream`. Errors a person sees are one line that says what to do.

The options of every command that touches the database (--database-url, --data-dir,
--log-format) are accepted before or after the subcommand; every option's help says its default."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from . import __version__
from . import log as logsetup
from .config import ENV_NAME, Settings, SettingsError, load_settings

_DEFAULTS = Settings()



def port_number(text: str) -> int:
    """A TCP port for argparse: 0 (pick a free one) to 65535; anything else one clear line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number; give 0 to 65535") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number; give 0 to 65535 (0 picks a free one)")
    return value

def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def database_options(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    """On the top parser (default None) and again on each subcommand that touches the database
    (default SUPPRESS, so an option given before the subcommand is not reset after it)."""
    default = None if top else argparse.SUPPRESS
    p.add_argument("--database-url", default=default, metavar="URL",
                   help="Postgres to use, postgresql://user:pass@host:port/db (default: $EVENTBATCH_DATABASE_URL; "
                        "unset, the embedded Postgres under --data-dir)")
    p.add_argument("--data-dir", default=default, metavar="DIR",
                   help="folder of the embedded Postgres, shared by every command pointed at it (default: "
                        f"$EVENTBATCH_DATA_DIR, else ./{_DEFAULTS.data_dir})")
    p.add_argument("--log-format", default=default, choices=["json", "console"],
                   help="log lines as JSON or for people (default: $EVENTBATCH_LOG_FORMAT, else console on a "
                        "terminal and json otherwise)")


def database_command(sub, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand that touches the database: it takes the database options too."""
    sp = sub.add_parser(name, help=help, description=kwargs.pop("description", help[:1].upper() + help[1:] + "."),
                        **kwargs)
    database_options(sp)
    return sp


# The settings of section 8 that `serve`, `api` and `worker` take as flags: (flag, Settings field,
# what it is). The provider's key has no flag: a command line is visible to every user (ps).
SERVER_SETTINGS = (
    ("--upstream-url", "upstream_url", "the provider's OpenAI-style base URL including /v1 (its key: "
                                       "$EVENTBATCH_UPSTREAM_API_KEY)"),
    ("--config", "config_path", "TOML file of several providers (base URL, key variable, models, concurrency)"),
    ("--upstream-concurrency", "upstream_concurrency", "most requests in flight to one provider from one "
                                                       "worker process"),
    ("--upstream-timeout-seconds", "upstream_timeout_seconds", "timeout of one attempt upstream, in seconds"),
    ("--max-attempts", "max_attempts", "attempts per request on 5xx, timeouts and connection errors while its "
                                       "provider answers others (429s and a paused provider's do not count)"),
    ("--retry-base-seconds", "retry_base_seconds", "wait before a request's 2nd attempt after a transient "
                                                   "failure, doubling after, with jitter"),
    ("--retry-max-seconds", "retry_max_seconds", "longest wait between two attempts of a request"),
    ("--lease-seconds", "lease_seconds", "how long a worker's claim on a chunk lasts without a heartbeat"),
    ("--chunk-size", "chunk_size", "requests per chunk a worker claims"),
    ("--window-seconds", "window_seconds", "how long the '24h' completion window really is, in seconds"),
    ("--upload-read-timeout-seconds", "upload_read_timeout_seconds", "the longest an upload may take to send "
                                                                     "each 1 MiB piece, another request its JSON "
                                                                     "body or any its head; slower is a 408"),
    ("--webhook-backoff-seconds", "webhook_backoff_seconds", "wait before a webhook delivery's first retry "
                                                             "(each later one 4x longer, at most 12 h)"),
    ("--webhook-retry-seconds", "webhook_retry_seconds", "how long a webhook delivery is retried"),
    ("--webhook-timeout-seconds", "webhook_timeout_seconds", "time limit of one webhook delivery attempt"),
)
_TYPES = {int: int, float: float}


def _server_options(sp: argparse.ArgumentParser) -> None:
    for flag, field, what in SERVER_SETTINGS:
        default = getattr(_DEFAULTS, field)
        kind = _TYPES.get(type(default), str)
        shown = "none" if default is None else _shown(default)
        sp.add_argument(flag, dest=field, type=kind, metavar=field.rsplit("_", 1)[-1].upper(),
                        help=f"{what} (default: ${ENV_NAME[field]}, else {shown})")


def _migration_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--migration-database-url", metavar="URL",
                    help="the schema owner's Postgres URL, for applying migrations (SPEC 14); prefer the variable, "
                         "a command line is visible to other users (default: $EVENTBATCH_MIGRATION_DATABASE_URL, "
                         "else --database-url)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eventbatch", description="OpenAI-compatible Batch API gateway.")
    p.add_argument("--version", action="version", version=f"eventbatch {__version__}",
                   help="print the version and exit")
    database_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for role, what in (("serve", "the API and a worker in one process"), ("api", "the HTTP API only"),
                       ("worker", "a worker only (no API)")):
        sp = database_command(sub, role, what)
        if role == "worker":
            sp.add_argument("--host", default="127.0.0.1",
                            help="address of --metrics-port (default: %(default)s)")
            sp.add_argument("--metrics-port", dest="port", type=port_number, metavar="PORT",
                            help="serve /metrics, /healthz and /readyz on this port (default: none)")
        else:
            sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
            sp.add_argument("--port", type=port_number, default=8080,
                            help="port to listen on; 0 picks a free one, logged at start (default: %(default)s)")
        _server_options(sp)
        _migration_option(sp)
    _migration_option(database_command(sub, "migrate",
                                       "apply the database migrations (serve, api and worker also do at start)"))
    keys = database_command(sub, "keys", "API keys of the projects (tenants)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    kc = database_command(keys_sub, "create", "create an API key for a project; the key is the last line printed")
    kc.add_argument("--project", required=True, help="the project (tenant) the key belongs to (required)")
    kl = database_command(keys_sub, "list", "the keys: id, project, created, last used, revoked (never the key)")
    kl.add_argument("--project", help="only this project's keys (default: every project)")
    kl.add_argument("--json", action="store_true", help="JSON lines instead of a table (default: a table)")
    kr = database_command(keys_sub, "revoke", "revoke a key: every running API process refuses it within 5 s")
    kr.add_argument("key_id", metavar="KEY_ID", help="the key's id (key_…), from `eventbatch keys list`")
    # webhooks (SPEC §12.4): the operator's registry of a project's endpoints
    wh = database_command(sub, "webhooks", "webhook endpoints told when a project's batches end")
    wh_sub = wh.add_subparsers(dest="webhooks_command", required=True, metavar="WEBHOOKS_COMMAND")
    wa = database_command(wh_sub, "add", "register an endpoint; its signing secret is the last line printed")
    wa.add_argument("--project", required=True, help="the project whose batches it hears of (required)")
    wa.add_argument("--url", required=True, help="where to POST the events, http or https (required)")
    wa.add_argument("--events", help="comma-separated: batch.completed, batch.failed, batch.cancelled, "
                                     "batch.expired (default: all four)")
    wl = database_command(wh_sub, "list", "the registered endpoints (never their secrets)")
    wl.add_argument("--project", help="only this project's (default: every project)")
    wr = database_command(wh_sub, "remove", "remove an endpoint; its pending deliveries are dropped")
    wr.add_argument("endpoint_id", metavar="ID", help="the endpoint, as `webhooks list` shows it")
    rp = database_command(sub, "replay", "a batch's events in order, for audits")
    rp.add_argument("batch_id", metavar="BATCH_ID", help="the batch to replay")
    rp.add_argument("--json", action="store_true", help="JSON lines instead of text (default: text)")
    rp.add_argument("--requests", action="store_true",
                    help="include every request's outcome and attempts (default: batch events only)")
    pr = database_command(sub, "projections", "the views of the log")
    pr_sub = pr.add_subparsers(dest="projections_command", required=True, metavar="PROJECTIONS_COMMAND")
    rb = database_command(pr_sub, "rebuild", "rebuild every view from the log")
    rb.add_argument("--verify", action="store_true",
                    help="compare the views with the log instead of replacing them; exit 1 on a difference "
                         "(default: rebuild)")
    from .client.commands import add_batch_parser
    add_batch_parser(sub)
    _mock_parser(sub)
    return p


def _mock_parser(sub) -> None:
    mu = sub.add_parser("mock-upstream", help="a fake OpenAI-compatible provider",
                        description="A fake OpenAI-compatible provider for tests and benchmarks. Every "
                                    "setting can also be changed while it runs: POST a JSON object of them "
                                    "to <control URL>/_mock/config.")
    mu.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    mu.add_argument("--port", type=port_number, default=8081, help="the provider's port, /v1 (default: %(default)s)")
    mu.add_argument("--control-port", type=port_number, default=0,
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


def _command(argv: list[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "mock-upstream":
            return _mock_upstream(args)
        if args.command == "batch":
            from .client.commands import run_batch_command
            return run_batch_command(args)
        settings = load_settings(
            database_url=args.database_url, data_dir=args.data_dir, log_format=args.log_format,
            migration_database_url=getattr(args, "migration_database_url", None),
            **{field: getattr(args, field, None) for _, field, _ in SERVER_SETTINGS})
        logsetup.configure(settings.log_format)
        match args.command:
            case "serve" | "api" | "worker":
                from .server import run_server
                return asyncio.run(run_server(settings, args.command, args.host, args.port))
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


def main(argv: list[str] | None = None) -> int:
    try:
        code = _command(argv)
        sys.stdout.flush()     # here, not at exit: a reader gone early is caught below
        return code
    except BrokenPipeError:
        # `eventbatch replay … | head`: the reader has what it wanted. No traceback; stdout to
        # devnull, so that the interpreter's last flush does not fail again (Python's own recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE     # what `yes | head` leaves, for a shell's pipefail


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
