"""The operations commands of the ``billstream`` CLI (registered in ``workers/cli.py``):
``replay``, ``dlq list|show|redrive``, ``lag``, ``schemas check|publish|docs``.

Thin: parse options, call ``workers/ops``, print. Results go to stdout (a table, or JSON
with ``--json``); progress bars and errors to stderr. Exit codes: 0 done, 1 refused or
failed (``error: <option>: <why>``), 2 a bad command line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

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

dlq_app = typer.Typer(help="Dead-letter topics: list, show, redrive.", no_args_is_help=True)

out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, markup=False)


def _settings() -> Settings:
    from workers.runtime.logging import configure

    settings = get_settings()
    configure("WARNING" if settings.log_level == "INFO" else settings.log_level, "console")
    return settings


def _error(e: object) -> None:
    typer.echo(f"error: {e}", err=True)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except OpsError as e:
        _error(e)
        raise typer.Exit(e.exit_code) from None


class _Bars:
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
def _bars() -> Iterator[_Bars]:
    if not err.is_terminal:
        yield _Bars(None)
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
        yield _Bars(progress)


def _json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _actor(actor: str | None) -> str:
    from workers.ops.audit import default_actor

    return actor or default_actor()


# --- replay ------------------------------------------------------------------------------


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

    settings = _settings()
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
            actor=_actor(actor),
            dry_run=dry_run,
            rate=settings.replay_rate_per_s if rate is None else rate,
        )
        req.validate()
    except OpsError as e:
        _error(e)
        raise typer.Exit(e.exit_code) from None
    with _bars() as bars:
        result = _run(run(settings, req, bars))
    if as_json:
        _json(result.to_json())
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


# --- dlq ---------------------------------------------------------------------------------


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

    settings = _settings()

    async def collect() -> list[dlq.DlqEntry]:
        names = [dlq.dlq_topic_of(topic)] if topic else await dlq.dlq_topics(settings)
        found: list[dlq.DlqEntry] = []
        with _bars() as bars:
            for name in names:
                found += await dlq.entries(settings, name, bars)
        return found

    found = _run(collect())
    if as_json:
        _json([e.summary() for e in found])
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
    out.print(table)
    out.print(f"{len(found)} dead-lettered record(s)")


@dlq_app.command("show")
def dlq_show(
    topic: Annotated[str, typer.Argument(help="A topic or its .dlq.")],
    record: Annotated[str, typer.Argument(help="PARTITION:OFFSET on the dead-letter topic.")],
) -> None:
    """One dead-lettered record in full: headers, key, value (JSON)."""
    from workers.ops import dlq

    settings = _settings()
    try:
        partition, offset = dlq.parse_ref(record)
    except OpsError as e:
        _error(e)
        raise typer.Exit(e.exit_code) from None
    entry = _run(dlq.show(settings, dlq.dlq_topic_of(topic), partition, offset))
    _json(entry.detail())


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

    settings = _settings()
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
        _error(e)
        raise typer.Exit(e.exit_code) from None
    with _bars() as bars:
        result = _run(
            dlq.redrive(
                settings,
                dlq.dlq_topic_of(topic),
                selection,
                actor=_actor(actor),
                reason=reason,
                dry_run=dry_run,
                again=again,
                force=force,
                progress=bars,
            )
        )
    if as_json:
        _json(result.to_json())
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


# --- lag ---------------------------------------------------------------------------------


def lag(
    group: Annotated[str | None, typer.Option("--group", help="Only this consumer group.")] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="Only this topic.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    prometheus: Annotated[
        bool, typer.Option("--prometheus", help="Print Prometheus text format.")
    ] = False,
    serve: Annotated[
        int | None,
        typer.Option(
            "--serve",
            help="Serve the lag gauges on this port (/metrics, /healthz, /readyz) until stopped.",
        ),
    ] = None,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes.")] = 15,
) -> None:
    """Consumer lag per group and partition: committed offset, end offset, lag. The
    groups are the ones the workers run (--group and --topic narrow, or name any other)."""
    from workers.ops import inventory
    from workers.ops import lag as lagmod
    from workers.processes import WORKERS

    settings = _settings()

    async def pairs() -> list[tuple[str, str]]:
        if group is not None and topic is not None:
            return [(group, topic)]
        found = lagmod.pairs_of(await inventory.consumers(settings, WORKERS), group, topic)
        if not found:
            raise OpsError(
                "no worker consumes that; give both --group and --topic to measure any group",
                option="--group" if group else "--topic",
                exit_code=2,
            )
        return found

    if serve is not None:
        _run(_serve(settings, serve, interval, pairs))
        return
    rows = _run(_measure(settings, pairs))
    if prometheus:
        sys.stdout.write(lagmod.prometheus_text(rows))
        return
    if as_json:
        _json([r.to_json() for r in rows])
        return
    table = Table("group", "topic", "partition", "committed", "end", "lag")
    for r in rows:
        table.add_row(
            r.group,
            r.topic,
            str(r.partition),
            "-" if r.committed is None else str(r.committed),
            str(r.end),
            str(r.lag),
        )
    out.print(table)
    for (g, t), total in lagmod.totals(rows).items():
        out.print(f"{g} on {t}: lag {total}")


async def _measure(settings: Settings, pairs: Any) -> Any:
    from workers.ops import lag as lagmod

    return await lagmod.measure(settings, await pairs())


async def _serve(settings: Settings, port: int, interval: float, pairs: Any) -> None:
    import signal

    from workers.ops import kafka
    from workers.ops import lag as lagmod
    from workers.runtime.health import HealthServer

    measured = await pairs()

    async def ready() -> dict[str, str]:
        try:
            async with kafka.consumer(settings) as c:
                await c.topics()
            return {"broker": "ok"}
        except Exception as e:
            return {"broker": f"unavailable: {type(e).__name__}"}

    server = HealthServer("0.0.0.0", port, ready)
    await server.start()
    typer.echo(f"serving consumer lag on http://0.0.0.0:{server.port}/metrics", err=True)
    task = asyncio.create_task(lagmod.monitor(settings, measured, interval))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


# --- schemas -----------------------------------------------------------------------------


def schemas_check(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare every message's JSON Schema with its published snapshot
    (schemas/published/). Exit 1 on an incompatible change; new messages are reported."""
    from workers.ops.contracts import PUBLISHED, check_catalog

    results = check_catalog()
    if as_json:
        _json([r.to_json() for r in results])
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
        _error(e)
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
