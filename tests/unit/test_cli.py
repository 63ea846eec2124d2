"""The command line as people expect it: every option of every subcommand explains itself and
says its default, the database options go before or after the subcommand, every setting of
section 8 has its flag, and `--version` answers."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from eventbatch import __version__
from eventbatch.cli import SERVER_SETTINGS, _parser
from eventbatch.config import ENV_NAME, SETTING_NAMES


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the top parser and every subcommand, however deep."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, path + (name,))


ALL = list(walk(_parser()))
# An option that takes no value (a switch) or that is required has no default to show.
NO_DEFAULT = (argparse._HelpAction, argparse._VersionAction)


def test_the_walk_reaches_every_command():
    names = {" ".join(path) for path, _ in ALL}
    assert {"serve", "api", "worker", "migrate", "keys create", "replay", "projections rebuild", "mock-upstream",
            "batch submit", "batch list", "batch get", "batch cancel", "batch watch", "batch download",
            "batch retry"} <= names


@pytest.mark.parametrize("path,parser", ALL, ids=[" ".join(p) or "eventbatch" for p, _ in ALL])
def test_every_option_has_help_and_says_its_default(path, parser):
    problems = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            missing = [c.dest for c in action._choices_actions if not c.help]
            problems += [f"subcommand {m!r} has no help" for m in missing]
            continue
        name = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            problems.append(f"{name} has no help text")
            continue
        takes_value = action.nargs != 0 and not isinstance(action, NO_DEFAULT)
        if action.option_strings and takes_value and not action.required and "default" not in action.help:
            problems.append(f"{name}: the help does not say the default ({action.help!r})")
        if action.option_strings and action.required and "required" not in action.help:
            problems.append(f"{name}: the help does not say it is required")
    assert not problems, f"eventbatch {' '.join(path)}: " + "; ".join(problems)
    # and the help renders (a stray % in a help text breaks only at --help time)
    assert parser.format_help()


def test_every_subcommand_help_runs_in_a_real_process():
    out = subprocess.run([sys.executable, "-m", "eventbatch", "batch", "submit", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--metadata" in out and "default" in out


def test_version():
    out = subprocess.run([sys.executable, "-m", "eventbatch", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"eventbatch {__version__}"


@pytest.mark.parametrize("argv", [
    ["--data-dir", "D", "--log-format", "json", "keys", "create", "--project", "x"],
    ["keys", "create", "--project", "x", "--data-dir", "D", "--log-format", "json"],
    ["keys", "--data-dir", "D", "create", "--project", "x", "--log-format", "json"],
    ["--log-format", "console", "keys", "create", "--project", "x", "--log-format", "json", "--data-dir", "D"],
])
def test_database_options_before_or_after_the_subcommand(argv):
    args = _parser().parse_args(argv)
    assert (args.data_dir, args.log_format, args.project) == ("D", "json", "x")


def test_an_option_given_before_is_not_reset_after():
    args = _parser().parse_args(["--database-url", "postgresql://u:p@h/db", "replay", "batch_1"])
    assert args.database_url == "postgresql://u:p@h/db"
    args = _parser().parse_args(["replay", "batch_1", "--database-url", "postgresql://u:p@h/db"])
    assert args.database_url == "postgresql://u:p@h/db"
    args = _parser().parse_args(["serve"])
    assert args.database_url is None and args.data_dir is None and args.log_format is None


@pytest.mark.parametrize("role", ["serve", "api", "worker"])
def test_every_server_setting_has_a_flag(role):
    args = _parser().parse_args([role, "--max-attempts", "3", "--lease-seconds", "5", "--chunk-size", "10",
                                 "--upstream-timeout-seconds", "7", "--window-seconds", "60",
                                 "--upstream-concurrency", "4", "--upstream-url", "http://127.0.0.1:1/v1"])
    assert (args.max_attempts, args.lease_seconds, args.chunk_size, args.upstream_timeout_seconds,
            args.window_seconds, args.upstream_concurrency) == (3, 5.0, 10, 7.0, 60.0, 4)


def test_each_setting_of_section_8_is_a_flag_somewhere():
    flags = {o for _, p in ALL for a in p._actions for o in a.option_strings}
    of_field = {ENV_NAME[field]: flag for flag, field, _ in SERVER_SETTINGS}
    of_field.update({"EVENTBATCH_DATABASE_URL": "--database-url", "EVENTBATCH_DATA_DIR": "--data-dir",
                     "EVENTBATCH_LOG_FORMAT": "--log-format", "EVENTBATCH_BASE_URL": "--base-url",
                     "EVENTBATCH_API_KEY": "--api-key", "EVENTBATCH_MIGRATION_DATABASE_URL": "--migration-database-url"})
    # The provider's key has no flag on purpose: every user of the machine can read a command line.
    without = {"EVENTBATCH_UPSTREAM_API_KEY"}
    missing = [n for n in SETTING_NAMES if n not in without and of_field.get(n) not in flags]
    assert not missing, f"settings without a command-line flag: {missing}"


def test_a_bad_flag_value_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "eventbatch", "serve", "--max-attempts", "0",
                        "--upstream-url", "http://127.0.0.1:9/v1", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "EVENTBATCH_MAX_ATTEMPTS" in r.stderr, r.stderr


def test_a_failed_batch_names_each_error_line_once():
    from openai.types import Batch

    from eventbatch.client.commands import _errors
    batch = Batch.model_validate({
        "id": "batch_1", "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": "file_1",
        "completion_window": "24h", "status": "failed", "created_at": 1,
        "errors": {"object": "list", "data": [
            {"code": "invalid_json_line", "line": 1, "message": "Line 1: This line is not parseable as valid JSON."},
            {"code": "missing_required_parameter", "line": 2, "message": "Missing required parameter: 'body'."}]}})
    said = _errors(batch)
    assert said.lower().count("line 1") == 1 and said.startswith("Line 1: This line")
    assert "line 2: Missing required parameter" in said       # a message without its line gets it
