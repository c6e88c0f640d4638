"""POS subscribers, run by the metering worker (``workers/metering/app.py`` registers them):
receipts become usage events through the outbox; mapping commands are stored."""

from __future__ import annotations

from pydantic import TypeAdapter

from schemas import topics
from schemas.envelope import WIRE
from schemas.pos import PosCommand, PosMappingSpec, PosReceiptRecorded
from storage.pos import PosMappingRepository
from workers.pos import service
from workers.pos.errors import UnmappedLocation
from workers.runtime import Batch, Runtime, Tx

RECEIPTS_GROUP = "billstream.pos"
COMMANDS_GROUP = "billstream.pos.commands"

_receipt: TypeAdapter[PosReceiptRecorded] = TypeAdapter(PosReceiptRecorded)
_command: TypeAdapter[PosCommand] = TypeAdapter(PosCommand)


def decode_receipt(raw: bytes) -> PosReceiptRecorded:
    return _receipt.validate_json(raw, context=WIRE)


def register(runtime: Runtime) -> None:
    @runtime.consumer(topics.INTEGRATIONS_POS, group=RECEIPTS_GROUP, decode=decode_receipt)
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
                tx.reject(
                    message,
                    f"no mapping for POS source {event.data.source!r}: PUT "
                    f"/v1/integrations/pos/{event.data.source}/mapping, then redrive",
                    code="no_pos_mapping",
                )
                continue
            try:
                usage = service.usage_events(event, PosMappingSpec.model_validate(raw))
            except UnmappedLocation as e:
                tx.reject(message, e.message, code=e.code)
                continue
            for u in usage:
                tx.emit(u, topic=topics.USAGE, key=f"{u.tenantid}:{u.subject}")

    @runtime.consumer(
        topics.COMMANDS_POS,
        group=COMMANDS_GROUP,
        decode=lambda raw: _command.validate_json(raw, context=WIRE),
        commands=True,
    )
    async def on_command(batch: Batch[PosCommand], tx: Tx) -> None:
        """Stores POS mappings (create or replace); later receipts use the new one."""
        repo = tx.repo(PosMappingRepository)
        for message in await tx.claim(batch):
            async with tx.command(message) as result:
                data = message.event.data
                spec = PosMappingSpec.model_validate(data.model_dump(exclude={"source"}))
                event = message.event
                await repo.put(event.tenantid, data.source, spec.model_dump(mode="json"), event.id)
                result["source"] = data.source
