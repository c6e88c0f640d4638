"""Partners subscribers — commands; invoicing events (paid invoices, credit notes issued and
voided, the subscriptions' plans); payments' refunds: decode → one transaction → storage and
the pure service → the ledger's events through the outbox."""

from __future__ import annotations

import json

from pydantic import TypeAdapter

from schemas import groups, topics
from schemas.credit_notes import CreditNoteIssued, CreditNoteVoided
from schemas.envelope import WIRE, AnyEvent, CloudEvent
from schemas.invoicing import (
    InvoicePaid,
    SubscriptionCreated,
    SubscriptionEnded,
    SubscriptionUpdated,
)
from schemas.partners import PartnersCommand
from schemas.payments import PaymentRefunded
from storage.partners import PartnerRepository
from workers.partners import ledger
from workers.partners.commands import COMMANDS, Context
from workers.runtime import Batch, Runtime, Tx

_READ: tuple[type[CloudEvent], ...] = (
    SubscriptionCreated,
    SubscriptionUpdated,
    SubscriptionEnded,
    InvoicePaid,
    CreditNoteIssued,
    CreditNoteVoided,
    PaymentRefunded,
)
_KNOWN: dict[str, type[CloudEvent]] = {c.model_fields["type"].default: c for c in _READ}
_commands: TypeAdapter[PartnersCommand] = TypeAdapter(PartnersCommand)


def decode_event(raw: bytes) -> CloudEvent:
    """The events partners follow, fully validated; any other by its envelope only."""
    obj = json.loads(raw)
    cls = _KNOWN.get(str(obj.get("type"))) if isinstance(obj, dict) else None
    return (cls or AnyEvent).model_validate(obj, context=WIRE)


def decode_command(raw: bytes) -> PartnersCommand:
    return _commands.validate_json(raw, context=WIRE)


async def apply(tx: Tx, event: CloudEvent) -> None:
    """One invoicing or payments event, in its batch's order."""
    if isinstance(event, SubscriptionCreated | SubscriptionUpdated | SubscriptionEnded):
        d = event.data
        await tx.repo(PartnerRepository).set_plans([(event.tenantid, d.subscription_id, d.plan)])
    elif isinstance(event, InvoicePaid):
        await ledger.invoice_paid(tx, event)
    elif isinstance(event, CreditNoteIssued):
        await ledger.credit_note_issued(tx, event)
    elif isinstance(event, CreditNoteVoided):
        await ledger.credit_note_voided(tx, event)
    elif isinstance(event, PaymentRefunded):
        await ledger.payment_refunded(tx, event)


def register(runtime: Runtime, ctx: Context) -> None:
    async def on_events(batch: Batch[CloudEvent], tx: Tx) -> None:
        wanted = [m for m in batch if not isinstance(m.event, AnyEvent)]
        for message in await tx.claim(wanted):
            await apply(tx, message.event)

    async def on_command(batch: Batch[PartnersCommand], tx: Tx) -> None:
        for message in await tx.claim(batch):
            async with tx.command(message) as result:
                result.update(await COMMANDS[type(message.event)](message.event, tx, ctx))

    runtime.consumer(
        topics.COMMANDS_PARTNERS,
        group=groups.PARTNERS_COMMANDS,
        decode=decode_command,
        commands=True,
    )(on_command)
    runtime.consumer(
        topics.EVENTS_INVOICING,
        group=groups.PARTNERS_INVOICING,
        decode=decode_event,
        label="invoicing",
    )(on_events)
    runtime.consumer(
        topics.EVENTS_PAYMENTS,
        group=groups.PARTNERS_PAYMENTS,
        decode=decode_event,
        label="payments",
    )(on_events)
