"""``billstream lag``: options → ``workers.ops.lag`` → a table, JSON, Prometheus text, or
the gauges served on ``--serve PORT`` until stopped."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from workers.ops.commands import console
from workers.ops.commands.console import out
from workers.ops.errors import OpsError
from workers.settings import Settings


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

    settings = console.settings()
    console.require(settings, broker=True)

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
        console.run(_serve(settings, serve, interval, pairs))
        return
    rows = console.run(_measure(settings, pairs))
    if prometheus:
        sys.stdout.write(lagmod.prometheus_text(rows))
        return
    if as_json:
        console.print_json([r.to_json() for r in rows])
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
    console.table(table)
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
    stop = asyncio.Event()
    monitor = lagmod.monitor(settings, measured, stop, interval)
    task = asyncio.create_task(monitor.run(), name=monitor.name)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
