"""``billstream``: run and operate billstream."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from workers.ops.commands import (
    console,
    dlq,
    lag,
    quarantine,
    receipts,
    replay,
    schemas,
    tax,
)
from workers.processes import WORKERS
from workers.settings import Settings, get_settings


def _flags_take_no_value() -> None:
    """Typer's help shows a type after every option, flags too (``--json <bool>``), though a
    flag takes no value (``--json=true`` is refused): show none after a flag."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()


def _dependency_failure(e: BaseException) -> str | None:
    """The one line to print when ``e`` means PostgreSQL or the broker failed, else None."""
    from aiokafka.errors import KafkaError

    from workers.runtime.database import DatabaseError

    if isinstance(e, KafkaError):
        what = "Kafka"
    elif isinstance(e, DatabaseError):
        what = "PostgreSQL"
    elif isinstance(e, OSError | TimeoutError):
        what = "a dependency"
    else:
        return None
    detail = (str(getattr(e, "orig", None) or e).strip().splitlines() or [""])[0]
    return f"{what} failed: {type(e).__name__}" + (f": {detail}" if detail else "")


class _Commands(TyperGroup):
    """Every command: a PostgreSQL or broker failure is one ``error:`` line and exit code 1
    (the traceback only with BILLSTREAM_LOG_LEVEL=DEBUG)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as e:
            line = _dependency_failure(e)
            if line is None or get_settings().log_level == "DEBUG":
                raise
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Commands,
    name="billstream",
    help="Kafka-native billing backbone. Settings come from BILLSTREAM_* environment variables.",
    no_args_is_help=True,
    add_completion=False,
)
tenant_app = typer.Typer(help="Tenants and API keys.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
schemas_app = typer.Typer(help="Message contracts (JSON Schema).", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")


def _settings(*, database: bool = False, broker: bool = False) -> Settings:
    """The settings and logging, after checking that PostgreSQL (``database``) and the
    broker (``broker``) answer within a few seconds (else one ``error:`` line, exit 1)."""
    from workers.runtime.logging import configure

    settings = get_settings()
    configure(settings.log_level, settings.log_format)
    if database or broker:
        console.require(settings, database=database, broker=broker)
    return settings


@app.command()
def migrate() -> None:
    """Apply the database migrations (idempotent)."""
    from storage import migrations

    settings = _settings(database=True)
    migrations.upgrade(settings.database_url)
    typer.echo("database migrated to head")


@topics_app.command("ensure")
def topics_ensure() -> None:
    """Create every billstream topic (and its dead-letter topic) that is missing."""
    from workers.runtime.topics import ensure_topics

    settings = _settings(broker=True)
    created = asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap,
            partitions=settings.topic_partitions,
            replication=settings.topic_replication,
        )
    )
    for name in created:
        typer.echo(f"created {name}")
    typer.echo(f"{len(created)} topic(s) created; the rest already existed")


@tenant_app.command("create")
def tenant_create(
    tenant_id: Annotated[str, typer.Argument(help="Slug: lowercase letters, digits, '-'.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
) -> None:
    """Create a tenant (or reuse it) and print a new API key. The key is shown only once."""
    import re

    from schemas.envelope import TENANT_ID_PATTERN

    if not re.fullmatch(TENANT_ID_PATTERN, tenant_id):
        typer.echo(f"error: tenant id must match {TENANT_ID_PATTERN}", err=True)
        raise typer.Exit(2)
    settings = _settings(database=True)
    from workers.admin import create_tenant

    created, key = asyncio.run(create_tenant(settings.database_url, tenant_id, name))
    typer.echo(f"tenant {tenant_id} {'created' if created else 'exists'}")
    typer.echo(f"api key: {key}")


T = TypeVar("T")


def run_on_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop where it is installed (not on Windows): a worker's
    event loop, its sockets and transports cost a quarter less CPU per message there
    (bench/RESULTS.md, issue 22). The ingress gets it from uvicorn."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


@app.command()
def worker(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(WORKERS)}.")],
) -> None:
    """Run one worker process until SIGTERM/SIGINT (graceful: the current batch commits)."""
    if name not in WORKERS:
        typer.echo(f"error: unknown worker {name!r}; choose one of {', '.join(WORKERS)}", err=True)
        raise typer.Exit(2)
    from workers import processes

    settings = _settings(database=True, broker=True)
    run_on_uvloop(processes.build(name, settings).run_until_signalled())


@app.command()
def ingress(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Run the HTTP ingress (OpenAPI at /docs)."""
    import uvicorn

    from workers.ingress.app import create_app
    from workers.runtime.app import freeze_startup_heap

    settings = _settings()
    asgi_app = create_app(settings)
    freeze_startup_heap()
    uvicorn.run(
        asgi_app,
        host=host or settings.ingress_host,
        port=port or settings.ingress_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # uvicorn's lines through our handler: one format, no colour codes
        lifespan="on",
    )


@schemas_app.command("export")
def schemas_export(
    out: Annotated[Path, typer.Option(help="Directory to write into.")] = Path("schemas-export"),
) -> None:
    """Write a JSON Schema for every command, event and the usage event, and an AsyncAPI
    document per worker (asyncapi/<worker>.asyncapi.json)."""
    from schemas.catalog import export
    from workers.ops.asyncapi import export as export_asyncapi

    for path in export(out):
        typer.echo(str(path))
    for path in asyncio.run(export_asyncapi(list(WORKERS), get_settings(), out)):
        typer.echo(str(path))


@app.command()
def dev(
    port: Annotated[int | None, typer.Option(help="Ingress port (default: setting).")] = None,
) -> None:
    """Run everything locally: embedded PostgreSQL and broker, migrations, topics,
    ingress and every worker. State lives under .billstream/. Ctrl-C stops it all."""
    import os

    from workers.dev import run_dev

    # a PostgreSQL or broker of the user's own must answer before anything starts
    settings = _settings(
        database="BILLSTREAM_DATABASE_URL" in os.environ,
        broker="BILLSTREAM_KAFKA_BOOTSTRAP" in os.environ,
    )
    raise typer.Exit(run_dev(settings, port=port, service_main=_service_main))


def _service_main() -> None:
    """A service ``billstream dev`` forked from itself: this CLI again, with the child's
    arguments and environment, its settings read anew."""
    get_settings.cache_clear()
    main()


# --- operations (workers/ops/commands/) -------------------------------------------------------

app.command("replay")(replay.replay)
app.command("lag")(lag.lag)
app.add_typer(dlq.dlq_app, name="dlq")
app.add_typer(quarantine.quarantine_app, name="quarantine")
app.add_typer(tax.tax_app, name="tax")
app.add_typer(receipts.receipts_app, name="receipts")
schemas_app.command("check")(schemas.schemas_check)
schemas_app.command("publish")(schemas.schemas_publish)
schemas_app.command("docs")(schemas.schemas_docs)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
