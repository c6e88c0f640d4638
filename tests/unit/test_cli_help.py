"""``billstream <command> --help`` at 80 columns, for every command: flags are shown as
flags (no ``<bool>``: they take no value), and no word of a description is broken across
lines."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from workers.cli import app

BOX = re.compile(r"[│╭╮╰╯─]")


def commands(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, [*path, name])


EVERY = list(commands(typer.main.get_command(app), []))


def test_every_command_is_listed() -> None:
    names = {" ".join(p) for p, _ in EVERY}
    assert {"migrate", "worker", "tenant create", "topics ensure", "replay", "lag", "dlq list",
            "dlq redrive", "quarantine list", "schemas check", "dev"} <= names  # fmt: skip


@pytest.mark.parametrize(("path", "command"), EVERY, ids=[" ".join(p) or "-" for p, _ in EVERY])
def test_help_at_80_columns_shows_flags_as_flags_and_breaks_no_word(
    path: list[str], command: Any
) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "<bool>" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    flat = " ".join(BOX.sub(" ", text).split())
    described = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    for word in (w for d in described for w in d.split()):
        assert word.strip(".,;:()") in flat, f"{' '.join(path)}: {word!r} broken or missing"
    for param in command.params:
        if getattr(param, "is_flag", False) and param.opts[0] != "--help":
            # the flag, then its description on the same line: no type in between
            line = next(line for line in text.splitlines() if param.opts[0] + " " in line)
            between = line.split(param.opts[0], 1)[1].split()
            assert between and not between[0].startswith("<"), line


def test_a_flag_takes_no_value() -> None:
    """What the help now says: ``--json`` alone; ``--json=true`` is refused."""
    result = CliRunner().invoke(app, ["dlq", "list", "--json=true"])
    assert result.exit_code == 2
