"""``billstream schemas check|publish|docs``: the published message contracts and the
events catalogue (docs/events.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workers.ops.commands import console
from workers.ops.commands.console import out


def schemas_check(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare every message's JSON Schema with its published snapshot
    (schemas/published/). Exit 1 on an incompatible change; new messages are reported."""
    from workers.ops.contracts import PUBLISHED, check_catalog

    results = check_catalog()
    if as_json:
        console.print_json([r.to_json() for r in results])
    else:
        for r in results:
            out.print(f"{r.status:12} {r.file}")
            for b in r.breaks:
                out.print(f"             - {b}")
        counts: dict[str, int] = {}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        out.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" ({PUBLISHED})")
        if counts.get("new"):
            out.print("publish new messages with: billstream schemas publish [TYPE...]")
    if any(r.failed for r in results):
        raise typer.Exit(1)


def schemas_publish(
    types: Annotated[
        list[str] | None,
        typer.Argument(
            help="CloudEvents types, topics or snapshot files to publish (default: all)."
        ),
    ] = None,
) -> None:
    """Write the published snapshots (schemas/published/) of the catalog's messages.
    Refuses incompatible changes: those need a new dataversion."""
    from workers.ops.contracts import publish

    try:
        results = publish(types or [])
    except ValueError as e:
        console.error(e)
        raise typer.Exit(1) from None
    for r in results:
        if r.status in ("new", "compatible"):
            out.print(f"published {r.file} ({r.status})")
    out.print(f"{len(results)} message(s) checked; snapshots are in schemas/published/")


def schemas_docs(
    path: Annotated[Path | None, typer.Option("--out", help="Default: docs/events.md.")] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 if the file is stale; write nothing.")
    ] = False,
) -> None:
    """Generate docs/events.md (topics, keys, event types and fields) from the catalog."""
    from workers.ops.eventsdoc import DOC, REGENERATE, render

    target = path or DOC
    text = render()
    if check:
        if not target.exists() or target.read_text() != text:
            typer.echo(f"{target} is stale; run: {REGENERATE}", err=True)
            raise typer.Exit(1)
        out.print(f"{target} is up to date")
        return
    target.write_text(text)
    out.print(f"wrote {target}")
