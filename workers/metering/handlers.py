"""Metering subscribers: decode → one transaction → service → done."""

from __future__ import annotations

from pydantic import TypeAdapter

from schemas import groups, topics
from schemas.envelope import WIRE, utcnow
from schemas.metering import MeteringCommand
from schemas.usage import UsageRecord
from storage.metering import MeterRepository, UsageRepository
from workers.metering import service
from workers.metering import totals as totals_
from workers.metering.commands import COMMANDS
from workers.runtime import Batch, Runtime, Tx

_commands: TypeAdapter[MeteringCommand] = TypeAdapter(MeteringCommand)


def decode_command(raw: bytes) -> MeteringCommand:
    return _commands.validate_json(raw, context=WIRE)


async def on_usage(batch: Batch[UsageRecord], tx: Tx) -> None:
    """Aggregates usage events into hourly buckets of every meter that reads them, and
    emits one usage.totals_changed per (subject, meter, hour) the batch changed."""
    fresh = await tx.claim(batch)
    meters = await tx.repo(MeterRepository).for_event_types(
        {(m.event.tenantid, m.event.type) for m in fresh}
    )
    result = service.aggregate([m.event for m in fresh], meters)
    for index, reason in result.rejected:
        tx.reject(fresh[index], reason, code="unusable_event")
    usage = tx.repo(UsageRepository)
    await usage.apply(result.deltas, result.uniques)
    touched = totals_.touched_totals(result.deltas, meters)
    totals = await usage.period_totals([t.key for t in touched])
    for tenant, value in totals_.totals_changed(touched, totals, utcnow()):
        tx.emit_encoded(
            value, type=totals_.TOTALS_CHANGED, topic=topics.EVENTS_METERING, key=tenant
        )


async def on_command(batch: Batch[MeteringCommand], tx: Tx) -> None:
    """Creates meters (idempotently) and emits meter.created."""
    for message in await tx.claim(batch):
        async with tx.command(message) as result:
            result.update(await COMMANDS[type(message.event)](message.event, tx))


def register(runtime: Runtime) -> None:
    runtime.consumer(topics.USAGE, group=groups.METERING_USAGE, decode=service.decode_usage)(
        on_usage
    )
    runtime.consumer(
        topics.COMMANDS_METERING,
        group=groups.METERING_COMMANDS,
        decode=decode_command,
        commands=True,
    )(on_command)
