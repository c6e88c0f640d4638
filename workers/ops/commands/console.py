"""What every operations command shares: settings (quiet logs), errors as ``error: <option>:
<why>`` with the exit code, progress bars on stderr (only on a terminal), JSON on stdout."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from workers.ops.errors import OpsError
from workers.settings import Settings, get_settings

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, markup=False)


def table(t: Table) -> None:
    """Print ``t`` on stdout: fitted to a terminal; into a pipe or a file (a script, ``less``)
    at its natural width, never cut to rich's default of 80 columns."""
    if out.is_terminal:
        out.print(t)
    else:
        Console(file=out.file, width=100_000, highlight=False, markup=False).print(t)


def settings() -> Settings:
    """The settings, with quiet logs: a command reports its own failures, the libraries'
    lines show only with BILLSTREAM_LOG_LEVEL=DEBUG."""
    from workers.runtime.logging import configure

    settings = get_settings()
    debug = settings.log_level == "DEBUG"
    configure(
        "WARNING" if settings.log_level == "INFO" else settings.log_level,
        "console",
        libraries="DEBUG" if debug else "CRITICAL",
    )
    return settings


def require(settings: Settings, *, database: bool = False, broker: bool = False) -> None:
    """Check that PostgreSQL (``database``) and the broker (``broker``) answer within a few
    seconds; if not: ``error: <setting>: cannot reach …`` and exit code 1."""
    from workers.ops import reach

    run(reach.require(settings, database_=database, broker_=broker))


def error(e: object) -> None:
    typer.echo(f"error: {e}", err=True)


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except OpsError as e:
        error(e)
        raise typer.Exit(e.exit_code) from None


class Bars:
    """``workers.ops.progress.Progress`` drawn with rich on stderr (only on a terminal)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def begin(self, description: str, total: int | None) -> None:
        if self.progress is None:
            return
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)


@contextmanager
def bars() -> Iterator[Bars]:
    if not err.is_terminal:
        yield Bars(None)
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        yield Bars(progress)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def actor_or_default(actor: str | None) -> str:
    from workers.ops.audit import default_actor

    return actor or default_actor()
