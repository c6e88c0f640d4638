"""``billstream quarantine list|show|release``: options → ``workers.ops.quarantine`` → a
table or JSON."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from workers.ops.commands import console
from workers.settings import Settings

if TYPE_CHECKING:  # the commands import what they use: --help stays quick
    from storage.quarantine import Entry

quarantine_app = typer.Typer(
    help="Job items set aside after a permanent failure: list, show, release.",
    no_args_is_help=True,
)


def _dict(entry: Entry) -> dict[str, Any]:
    return dataclasses.asdict(entry)


def _settings() -> Settings:
    settings = console.settings()
    console.require(settings, database=True)
    return settings


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


@quarantine_app.command("list")
def quarantine_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's items.")] = None,
    released: Annotated[bool, typer.Option("--released", help="Include released entries.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Quarantined items, newest first: job, tenant, what, why."""
    from workers.ops import quarantine

    found = console.run(quarantine.entries(_settings(), tenant, released, limit))
    if as_json:
        _print_json([_dict(e) for e in found])
        return
    table = Table("id", "at", "tenant", "job", "kind", "item", "released", "reason")
    for e in found:
        table.add_row(
            e.id, e.quarantined_at.isoformat()[:19], e.tenant_id, e.job, e.kind, e.item_id,
            e.released_at.isoformat()[:19] if e.released_at else "", e.reason[:120],
        )  # fmt: skip
    console.table(table)
    console.out.print(f"{len(found)} quarantined item(s)")


@quarantine_app.command("show")
def quarantine_show(id: Annotated[str, typer.Argument(help="The entry's id.")]) -> None:
    """One entry in full (JSON)."""
    from workers.ops import quarantine

    entry = console.run(quarantine.get(_settings(), id))
    if entry is None:
        typer.echo(f"error: no quarantine entry {id!r}", err=True)
        raise typer.Exit(1)
    _print_json(_dict(entry))


@quarantine_app.command("release")
def quarantine_release(
    id: Annotated[str, typer.Argument(help="The entry's id.")],
    actor: Annotated[str | None, typer.Option(help="Who releases it (default: OS user).")] = None,
) -> None:
    """Release an entry once its cause is fixed: the next run processes the item again."""
    from workers.ops import quarantine
    from workers.ops.audit import default_actor

    entry = console.run(quarantine.release(_settings(), id, actor or default_actor()))
    if entry is None:
        typer.echo(f"error: no active quarantine entry {id!r}", err=True)
        raise typer.Exit(1)
    _print_json(_dict(entry))
