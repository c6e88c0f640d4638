"""``billstream replay``: options → ``workers.ops.replay`` → a table or JSON."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from workers.ops.commands import console
from workers.ops.commands.console import out
from workers.ops.errors import OpsError


def replay(
    topic: Annotated[str, typer.Option("--topic", help="The topic to read.")],
    start: Annotated[
        str,
        typer.Option(
            "--from",
            help="First record: an offset (in every selected partition), an RFC 3339 time "
            "(record timestamps; 2026-11-22T10:00:00Z), a date, or 'earliest'.",
        ),
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit event).")],
    end: Annotated[
        str | None,
        typer.Option(
            "--to", help="Stop before this offset or time (default: the end). --into only."
        ),
    ] = None,
    partition: Annotated[int | None, typer.Option("--partition", help="Only this one.")] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only this tenant's messages. --into only.")
    ] = None,
    type_glob: Annotated[
        str | None,
        typer.Option("--type", help="Only CloudEvents types matching this glob. --into only."),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            help="Move this consumer group's offsets back to --from (refused while it has "
            "live members): the context re-reads, and dedupes what it had applied.",
        ),
    ] = None,
    into: Annotated[
        str | None,
        typer.Option(
            "--into",
            help="Re-publish the selected records to this topic (keys and headers kept, "
            "plus billstream-replay-* headers).",
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option("--rate", help="Records per second with --into (0: no cap)."),
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Who (default: the OS user).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would happen; change nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Replay a topic range into a consumer group (--group) or a topic (--into). Audited
    (ops.replayed) before it starts; every consumer is idempotent, so what was applied
    before changes nothing."""
    from workers.ops.replay import ReplayRequest, parse_bound
    from workers.ops.replay import replay as run

    settings = console.settings()
    try:
        req = ReplayRequest(
            topic=topic,
            start=parse_bound(start, "--from"),
            end=parse_bound(end, "--to") if end is not None else None,
            partition=partition,
            tenant=tenant,
            type_glob=type_glob,
            group=group,
            into=into,
            reason=reason,
            actor=console.actor_or_default(actor),
            dry_run=dry_run,
            rate=settings.replay_rate_per_s if rate is None else rate,
        )
        req.validate()
    except OpsError as e:
        console.error(e)
        raise typer.Exit(e.exit_code) from None
    console.require(settings, broker=True)
    with console.bars() as bars:
        result = console.run(run(settings, req, bars))
    if as_json:
        console.print_json(result.to_json())
        return
    what = "would re-read" if dry_run else "re-reads"
    if result.mode == "group":
        table = Table("partition", "committed", "reset to", "re-reads", "note")
        for p in result.partitions:
            committed = "-" if p.committed is None else str(p.committed)
            table.add_row(str(p.partition), committed, str(p.start), str(p.records), p.note)
    else:
        table = Table("partition", "from", "to (exclusive)", "records")
        for p in result.partitions:
            table.add_row(str(p.partition), str(p.start), str(p.end), str(p.records))
    out.print(table)
    if result.mode == "group":
        out.print(f"group {result.group} {what} {result.records} record(s) of {result.topic}")
    elif dry_run:
        out.print(
            f"{result.matched} of {result.records} record(s) match; would publish them to "
            f"{result.into}"
        )
    else:
        out.print(f"published {result.published} of {result.records} record(s) to {result.into}")
    if result.audit_id:
        out.print(f"audit event ops.replayed {result.audit_id}")
