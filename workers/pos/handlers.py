"""POS subscribers, run by the POS worker (``workers/pos/app.py``): receipts become usage
events through the outbox; mapping commands are stored."""

from __future__ import annotations

from pydantic import TypeAdapter

from schemas import groups, topics
from schemas.envelope import WIRE
from schemas.pos import PosCommand, PosMappingSpec, PosReceiptRecorded
from storage.pos import PosMappingRepository
from workers.pos import service
from workers.pos.commands import COMMANDS
from workers.pos.errors import UnmappedLocation
from workers.runtime import Batch, Runtime, Tx

_receipt: TypeAdapter[PosReceiptRecorded] = TypeAdapter(PosReceiptRecorded)
_command: TypeAdapter[PosCommand] = TypeAdapter(PosCommand)


def decode_receipt(raw: bytes) -> PosReceiptRecorded:
    return _receipt.validate_json(raw, context=WIRE)


def decode_command(raw: bytes) -> PosCommand:
    return _command.validate_json(raw, context=WIRE)


async def on_receipts(batch: Batch[PosReceiptRecorded], tx: Tx) -> None:
    """Turns POS receipts into usage events (through the outbox) by the tenant's mapping;
    a receipt already applied (same source and receipt id) is dropped."""
    fresh = await tx.claim(batch)
    mappings = await tx.repo(PosMappingRepository).for_sources(
        {(m.event.tenantid, m.event.data.source) for m in fresh}
    )
    for message in fresh:
        event = message.event
        raw = mappings.get((event.tenantid, event.data.source))
        if raw is None:
            tx.reject(message, service.no_mapping(event.data.source), code="no_pos_mapping")
            continue
        try:
            usage = service.usage_events(event, PosMappingSpec.model_validate(raw))
        except UnmappedLocation as e:
            tx.reject(message, e.message, code=e.code)
            continue
        for u in usage:
            tx.emit(u, topic=topics.USAGE, key=topics.partition_key(u.tenantid, u.subject))


async def on_command(batch: Batch[PosCommand], tx: Tx) -> None:
    """Stores POS mappings (create or replace); later receipts use the new one."""
    for message in await tx.claim(batch):
        async with tx.command(message) as result:
            result.update(await COMMANDS[type(message.event)](message.event, tx))


def register(runtime: Runtime) -> None:
    runtime.consumer(topics.INTEGRATIONS_POS, group=groups.POS_RECEIPTS, decode=decode_receipt)(
        on_receipts
    )
    runtime.consumer(
        topics.COMMANDS_POS, group=groups.POS_COMMANDS, decode=decode_command, commands=True
    )(on_command)
