"""Payments subscriptions (finalized invoices, commands, verified Stripe events) and the
payments job: decode → Tx → call → done."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial, update_wrapper

from pydantic import TypeAdapter

from schemas import groups, topics
from schemas.envelope import WIRE, CloudEvent
from schemas.invoicing import InvoiceFinalized
from schemas.payments import PaymentsCommand, StripeEventReceived
from storage.payments import Collection, PaymentsRepository
from workers.payments import credit_notes, service
from workers.payments.commands import COMMANDS, STRIPE_COMMANDS
from workers.payments.jobs import COLLECT, Collector
from workers.payments.stripe_events import STRIPE_EVENTS
from workers.runtime import Batch, Runtime, Tx
from workers.settings import Settings

# invoicing events after which an invoice must not be charged (again)
CLOSING = frozenset({"invoice.voided", "invoice.paid", "invoice.marked_uncollectible"})

_commands: TypeAdapter[PaymentsCommand] = TypeAdapter(PaymentsCommand)


def decode_invoice_event(raw: bytes) -> CloudEvent:
    """``invoice.finalized`` in full; any other invoicing event as a bare envelope."""
    payload = json.loads(raw)
    if (
        isinstance(payload, dict)
        and payload.get("type") == InvoiceFinalized.model_fields["type"].default
    ):
        return InvoiceFinalized.model_validate(payload, context=WIRE)
    return CloudEvent.model_validate(payload, context=WIRE)


def decode_command(raw: bytes) -> PaymentsCommand:
    return _commands.validate_json(raw, context=WIRE)


def decode_stripe_event(raw: bytes) -> StripeEventReceived:
    return StripeEventReceived.model_validate_json(raw, context=WIRE)


def _nothing() -> None:
    pass


async def on_invoice(
    batch: Batch[CloudEvent],
    tx: Tx,
    *,
    clock: service.Clock = service.utcnow,
    wake: Callable[[], None] = _nothing,
) -> None:
    """A finalized invoice with an amount due opens its collection (auto-collection); a
    voided or otherwise closed invoice stops its dunning."""
    repo = tx.repo(PaymentsRepository)
    opened = False
    for message in await tx.claim(batch):
        event = message.event
        if event.type in credit_notes.EVENTS:
            opened = await credit_notes.on_credit_note(event, tx) or opened
            continue
        if event.type in CLOSING and isinstance(event.data, dict):
            await repo.stop_collection(event.tenantid, str(event.data.get("invoice_id")))
            continue
        if not isinstance(event, InvoiceFinalized) or event.data.amount_due <= 0:
            continue
        account = await repo.account(event.tenantid)
        if account is None or not account.auto_collection:
            continue
        inv = event.data
        await repo.open_collection(
            Collection(
                tenant_id=event.tenantid,
                invoice_id=inv.invoice_id,
                customer=inv.customer,
                amount=inv.amount_due,
                currency=inv.currency,
                status="due",
                next_attempt_at=clock(),
                correlationid=event.correlationid or event.id,
            )
        )
        opened = True
    if opened:
        tx.after_commit(wake)  # the collector charges them now, not at its next tick


async def on_command(
    batch: Batch[PaymentsCommand], tx: Tx, *, wake: Callable[[], None] = _nothing
) -> None:
    """Stripe settings, customers, payment methods, refunds, offline payments."""
    # Stripe settings and offline payments are applied here (COMMANDS); a command that calls
    # Stripe is queued for the payments job, outside this transaction (its outcome stays
    # pending until the job records it). The docstring is the AsyncAPI description.
    repo = tx.repo(PaymentsRepository)
    queued = False
    for message in await tx.claim(batch):
        cmd = message.event
        if type(cmd) in STRIPE_COMMANDS:
            payload = cmd.model_dump(mode="json")
            await repo.queue_operation(cmd.tenantid, cmd.id, cmd.type, payload)
            queued = True
            continue
        async with tx.command(message) as result:
            result.update(await COMMANDS[type(cmd)](cmd, tx))
    if queued:
        tx.after_commit(wake)  # the job performs them now, not at its next tick


async def on_stripe(batch: Batch[StripeEventReceived], tx: Tx, *, dunning: service.Dunning) -> None:
    """Verified Stripe events become payment events; never moving a payment backwards."""
    # what each Stripe event type does: STRIPE_EVENTS; other types are ignored
    for message in await tx.claim(batch):
        event = message.event
        handler = STRIPE_EVENTS.get(event.data.type)
        if handler is not None:
            await handler(event, tx, dunning)


def register(runtime: Runtime, settings: Settings, clock: service.Clock = service.utcnow) -> None:
    dunning = service.Dunning(settings.dunning_schedule_days, clock)
    collector = Collector(runtime.jobs, settings, clock=clock)
    loop = runtime.job(
        COLLECT, collector.tick, every_s=settings.payments_tick_s, close=collector.close
    )
    runtime.consumer(
        topics.EVENTS_INVOICING, group=groups.PAYMENTS_INVOICES, decode=decode_invoice_event
    )(update_wrapper(partial(on_invoice, clock=clock, wake=loop.wake), on_invoice))
    runtime.consumer(
        topics.COMMANDS_PAYMENTS, group=groups.PAYMENTS_COMMANDS, decode=decode_command,
        commands=True,
    )(update_wrapper(partial(on_command, wake=loop.wake), on_command))  # fmt: skip
    runtime.consumer(
        topics.INTEGRATIONS_STRIPE, group=groups.PAYMENTS_STRIPE, decode=decode_stripe_event
    )(update_wrapper(partial(on_stripe, dunning=dunning), on_stripe))
