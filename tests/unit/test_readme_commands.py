"""README.md holds to the code: every `eventbatch …` it shows parses with the real command line,
its commands table names every subcommand, and its settings table every setting."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from eventbatch.cli import _parser
from eventbatch.config import SETTING_NAMES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def commands() -> list[list[str]]:
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README, flags=re.S))
    found = []
    for snippet in spans + [line for b in blocks for line in b.splitlines()]:
        snippet = snippet.split("#", 1)[0].split("|", 1)[0].split(">", 1)[0]
        m = re.search(r"(?:^|[\s/$(])eventbatch\s+(.+)$", snippet)
        if m and not m.group(1).startswith(("…", "-", "is ", "and ")):
            argv = shlex.split(m.group(1).replace("…", "").replace(" &", ""))
            found.append([a for a in argv if a not in ("[", "]")])
    return found


VALUES = {"E": "/v1/chat/completions", "URL": "http://127.0.0.1:9/hook", "LIST": "batch.completed",
          "K=V": "team=search", "P": "8080", "N": "5", "F": "0.1", "H": "127.0.0.1"}


def placeholders(argv: list[str]) -> list[str]:
    """The table's placeholders (`[--port P]`, `FILE`, `K=V …`) as plausible values."""
    out = []
    for a in argv:
        a = a.strip("[]")
        if not a:
            continue
        out.append(VALUES.get(a, "x" if re.fullmatch(r"[A-Z_]+", a) else a))
    return out


def is_command_path(words: list[str]) -> bool:
    parser = _parser()
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            return False
        parser = subs[0].choices[word]
    return bool(words)


def test_every_command_shown_parses():
    shown = commands()
    assert len(shown) >= 20
    for argv in shown:
        argv = placeholders(argv)
        # the commands table writes alternatives with ' / ' and optional parts in brackets
        for alternative in " ".join(argv).split(" / "):
            words = alternative.split()
            if is_command_path(words):   # a mention of a command by name, in prose
                continue
            try:
                _parser().parse_args(words)
            except SystemExit as exc:
                if exc.code == 0:   # --help, --version
                    continue
                raise AssertionError(f"`eventbatch {alternative}` in README.md does not parse") from exc


def test_the_commands_table_names_every_subcommand():
    table = README[README.index("## Commands"):README.index("## Dashboard")]

    def leaves(parser: argparse.ArgumentParser, path=()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield " ".join(path)
        for action in subs:
            for name, sub in action.choices.items():
                yield from leaves(sub, path + (name,))
    missing = []
    for leaf in leaves(_parser()):
        *group, last = leaf.split()
        if leaf not in table and not (group and f"{group[0]} {last}" in table) and f" {last} " not in table:
            missing.append(leaf)
    assert not missing, f"commands without a row in README.md: {missing}"
    assert "--version" in table


def test_the_settings_table_names_every_setting():
    settings = README[README.index("## Settings"):]
    missing = [name for name in SETTING_NAMES if f"`{name}`" not in settings]
    assert not missing, f"settings not in README.md's table: {missing}"
