"""``billstream tax report``: options → ``workers.ops.tax_report`` → CSV or JSON on stdout or
in a file (written whole or not at all), the count of rows on stderr."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import typer

from workers.ops.commands import console

tax_app = typer.Typer(help="Taxes: the tax report an accountant files from.", no_args_is_help=True)


def _instant(option: str, text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        console.error(f"{option}: an ISO 8601 instant with its offset, e.g. 2026-01-01T00:00:00Z")
        raise typer.Exit(2)
    return value


@tax_app.command("report")
def tax_report(
    from_: Annotated[
        str,
        typer.Option("--from", help="Start, inclusive: an ISO 8601 instant (2026-01-01T00:00Z)."),
    ],
    to: Annotated[str, typer.Option("--to", help="End, exclusive: an ISO 8601 instant.")],
    fmt: Annotated[
        Literal["csv", "json"],
        typer.Option("--format", help="csv (the rows) or json (rows and totals)."),
    ] = "csv",
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="The tenant (default: the only one there is).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write to this file (default: stdout).")
    ] = None,
) -> None:
    """Every finalized invoice and credit note of [--from, --to), one row per document and
    tax rate: what GET /v1/tax/report answers (docs/taxes.md)."""
    from workers.ops import tax_report

    start, end = _instant("--from", from_), _instant("--to", to)
    settings = console.settings()
    console.require(settings, database=True)
    who = console.run(tax_report.tenant_of(settings, tenant))

    def progress(rows: int) -> None:
        if console.err.is_terminal:
            console.err.print(f"\r{rows} rows", end="")

    if output is None:
        count = console.run(tax_report.write(settings, who, start, end, fmt, sys.stdout, progress))
    else:
        partial = output.with_name(output.name + ".partial")
        try:
            with partial.open("w", encoding="utf-8", newline="") as f:
                count = console.run(tax_report.write(settings, who, start, end, fmt, f, progress))
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    where = f" to {output}" if output is not None else ""
    typer.echo(f"tax report of {who}: {count} row(s) written{where}", err=True)
