"""Receipts subscribers: the invoicing and payments events that report a document (an
invoice finalized, a credit note issued, a payment succeeded, a refund) get their receipt;
key rotations are commands. Decode → one transaction → issue → done."""

from __future__ import annotations

import json

from pydantic import TypeAdapter

from schemas import groups, topics
from schemas.credit_notes import CreditNoteIssued
from schemas.envelope import WIRE, AnyEvent, CloudEvent
from schemas.invoicing import InvoiceFinalized
from schemas.payments import PaymentRefunded, PaymentSucceeded
from schemas.receipts import ReceiptsCommand
from workers.receipts import service
from workers.receipts.commands import COMMANDS
from workers.receipts.issuing import issue
from workers.runtime import Batch, Runtime, Tx
from workers.settings import Settings

DOCUMENT_TOPICS = (topics.EVENTS_INVOICING, topics.EVENTS_PAYMENTS)
_READ: tuple[type[CloudEvent], ...] = (
    InvoiceFinalized,
    CreditNoteIssued,
    PaymentSucceeded,
    PaymentRefunded,
)
_KNOWN: dict[str, type[CloudEvent]] = {c.model_fields["type"].default: c for c in _READ}
_commands: TypeAdapter[ReceiptsCommand] = TypeAdapter(ReceiptsCommand)


def decode_event(raw: bytes) -> CloudEvent:
    """The events receipts attest, fully validated; any other by its envelope only."""
    obj = json.loads(raw)
    cls = _KNOWN.get(str(obj.get("type"))) if isinstance(obj, dict) else None
    return (cls or AnyEvent).model_validate(obj, context=WIRE)


def decode_command(raw: bytes) -> ReceiptsCommand:
    return _commands.validate_json(raw, context=WIRE)


def register(runtime: Runtime, settings: Settings) -> None:
    async def on_documents(batch: Batch[CloudEvent], tx: Tx) -> None:
        """Issues a receipt for each document reported, once: no inbox here — a receipt's
        id is its document's, and one already issued is skipped under its chain's lock."""
        documents = [(a, m.event) for m in batch if (a := service.attest(m.event)) is not None]
        await issue(tx, settings, documents)

    async def on_command(batch: Batch[ReceiptsCommand], tx: Tx) -> None:
        """Key rotations."""
        for message in await tx.claim(batch):
            async with tx.command(message) as result:
                result.update(await COMMANDS[type(message.event)](message.event, tx, settings))

    runtime.consumer(
        DOCUMENT_TOPICS, group=groups.RECEIPTS_DOCUMENTS, decode=decode_event, label="documents"
    )(on_documents)
    runtime.consumer(
        topics.COMMANDS_RECEIPTS,
        group=groups.RECEIPTS_COMMANDS,
        decode=decode_command,
        commands=True,
    )(on_command)
