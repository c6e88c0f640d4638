"""``billstream dlq list|show|redrive``: options → ``workers.ops.dlq`` → a table or JSON."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from workers.ops.commands import console
from workers.ops.commands.console import out
from workers.ops.errors import OpsError

dlq_app = typer.Typer(help="Dead-letter topics: list, show, redrive.", no_args_is_help=True)


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[
        str | None,
        typer.Argument(help="A topic or its .dlq (default: every dead-letter topic)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Dead-lettered records with their error headers (and whether they were redriven)."""
    from workers.ops import dlq

    settings = console.settings()
    console.require(settings, broker=True)

    async def collect() -> list[dlq.DlqEntry]:
        names = [dlq.dlq_topic_of(topic)] if topic else await dlq.dlq_topics(settings)
        found: list[dlq.DlqEntry] = []
        with console.bars() as bars:
            for name in names:
                found += await dlq.entries(settings, name, bars)
        return found

    found = console.run(collect())
    if as_json:
        console.print_json([e.summary() for e in found])
        return
    columns = ("dlq topic", "record", "error", "type", "tenant", "id", "at", "redriven", "reason")
    table = Table(*columns)
    for e in found:
        s = e.summary()
        redriven = f"{s['redriven_at'][:19]}" if s["redriven_at"] else ""
        if e.redrive_count:
            redriven = f"{redriven} (#{e.redrive_count})".strip()
        table.add_row(
            e.dlq_topic,
            e.ref,
            s["error"] or "",
            s["type"] or "",
            s["tenantid"] or "",
            str(s["id"] or ""),
            (s["at"] or "")[:19],
            redriven,
            (s["reason"] or "")[:120],
        )
    console.table(table)
    out.print(f"{len(found)} dead-lettered record(s)")


@dlq_app.command("show")
def dlq_show(
    topic: Annotated[str, typer.Argument(help="A topic or its .dlq.")],
    record: Annotated[str, typer.Argument(help="PARTITION:OFFSET on the dead-letter topic.")],
) -> None:
    """One dead-lettered record in full: headers, key, value (JSON)."""
    from workers.ops import dlq

    settings = console.settings()
    try:
        partition, offset = dlq.parse_ref(record)
    except OpsError as e:
        console.error(e)
        raise typer.Exit(e.exit_code) from None
    console.require(settings, broker=True)
    entry = console.run(dlq.show(settings, dlq.dlq_topic_of(topic), partition, offset))
    console.print_json(entry.detail())


@dlq_app.command("redrive")
def dlq_redrive(
    topic: Annotated[str, typer.Argument(help="A topic or its .dlq.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit event).")],
    record: Annotated[
        list[str] | None,
        typer.Option("--record", help="PARTITION:OFFSET on the DLQ; repeatable."),
    ] = None,
    error: Annotated[
        str | None, typer.Option("--error", help="Only records with this error code.")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's.")] = None,
    type_glob: Annotated[
        str | None, typer.Option("--type", help="Only CloudEvents types matching this glob.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every record not redriven yet.")] = False,
    again: Annotated[
        bool, typer.Option("--again", help="Also records that were redriven before.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Also records redriven BILLSTREAM_DLQ_MAX_REDRIVES times."),
    ] = False,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Who (default: the OS user).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would go.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-publish dead-lettered records to their original topic after a fix. A record
    that still fails comes back to the DLQ (with its redrive count), never loops."""
    from workers.ops import dlq

    settings = console.settings()
    try:
        selection = dlq.Selection(
            records=tuple(dlq.parse_ref(r) for r in record or ()),
            error=error,
            tenant=tenant,
            type_glob=type_glob,
            all=all_,
        )
        selection.validate()
    except OpsError as e:
        console.error(e)
        raise typer.Exit(e.exit_code) from None
    console.require(settings, broker=True)
    with console.bars() as bars:
        result = console.run(
            dlq.redrive(
                settings,
                dlq.dlq_topic_of(topic),
                selection,
                actor=console.actor_or_default(actor),
                reason=reason,
                dry_run=dry_run,
                again=again,
                force=force,
                progress=bars,
            )
        )
    if as_json:
        console.print_json(result.to_json())
        return
    for entry in result.chosen:
        verb = "would redrive" if dry_run else "redriven"
        out.print(f"{verb} {entry.ref} -> {entry.original_topic} ({entry.error})")
    for s in result.skipped:
        out.print(f"skipped {s.entry.ref}: {s.why}")
    if dry_run:
        out.print(f"{len(result.chosen)} record(s) would be redriven")
    else:
        out.print(f"{result.redriven} record(s) redriven")
        if result.audit_id:
            out.print(f"audit event ops.redriven {result.audit_id}")
