"""Payments subscribers (finalized invoices, commands, verified Stripe events) and the
collector loop."""

from __future__ import annotations

import json
from typing import Any

import structlog
from pydantic import TypeAdapter

from schemas import topics
from schemas.envelope import WIRE, CloudEvent
from schemas.invoicing import InvoiceFinalized
from schemas.payments import (
    DisputeData,
    PaymentDisputed,
    PaymentRefunded,
    PaymentsCommand,
    RefundData,
    StripeEventReceived,
)
from storage.outbox import add
from storage.payments import Collection, PaymentsRepository
from workers.payments import service
from workers.payments.collector import Clock, Collector, customer_key, settle, utcnow
from workers.payments.commands import Commands
from workers.payments.gateway import META_PAYMENT
from workers.payments.operations import DEFERRED
from workers.runtime import Batch, Runtime, Tx
from workers.settings import Settings

INVOICES_GROUP = "billstream.payments.invoices"
COMMANDS_GROUP = "billstream.payments.commands"
STRIPE_GROUP = "billstream.payments.stripe"
# invoicing events after which an invoice must not be charged (again)
CLOSING = frozenset({"invoice.voided", "invoice.paid", "invoice.marked_uncollectible"})

log = structlog.get_logger("billstream.payments")
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


def register(runtime: Runtime, settings: Settings, clock: Clock = utcnow) -> None:
    collector = Collector(
        runtime.sessions,
        settings,
        clock=clock,
        on_emitted=runtime.on_committed,
        jobs=runtime.jobs,
    )

    @runtime.consumer(topics.EVENTS_INVOICING, group=INVOICES_GROUP, decode=decode_invoice_event)
    async def on_invoice(batch: Batch[CloudEvent], tx: Tx) -> None:
        """A finalized invoice with an amount due opens its collection (auto-collection); a
        voided or otherwise closed invoice stops its dunning."""
        repo = PaymentsRepository(tx.session)
        for message in await tx.claim(batch):
            event = message.event
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

    @runtime.consumer(
        topics.COMMANDS_PAYMENTS,
        group=COMMANDS_GROUP,
        decode=lambda raw: _commands.validate_json(raw, context=WIRE),
        commands=True,
    )
    async def on_command(batch: Batch[PaymentsCommand], tx: Tx) -> None:
        """Stripe settings, customers, payment methods, refunds, offline payments."""
        commands = Commands(tx.session, tx)
        repo = PaymentsRepository(tx.session)
        for message in await tx.claim(batch):
            cmd = message.event
            if isinstance(cmd, DEFERRED):  # calls Stripe: the collector runs it, outside this tx
                payload = cmd.model_dump(mode="json")
                await repo.queue_operation(cmd.tenantid, cmd.id, cmd.type, payload)
                continue
            async with tx.command(message) as result:
                result.update(await commands.apply(cmd))

    @runtime.consumer(
        topics.INTEGRATIONS_STRIPE,
        group=STRIPE_GROUP,
        decode=lambda raw: StripeEventReceived.model_validate_json(raw, context=WIRE),
    )
    async def on_stripe(batch: Batch[StripeEventReceived], tx: Tx) -> None:
        """Verified Stripe events become payment events; never moving a payment backwards."""
        for message in await tx.claim(batch):
            await apply_stripe_event(tx, message.event, clock, settings.dunning_schedule_days)

    runtime.job(
        "payments.collect", collector.tick, every_s=settings.payments_tick_s, close=collector.close
    )


async def apply_stripe_event(
    tx: Tx, event: StripeEventReceived, clock: Clock, schedule: list[float]
) -> None:
    repo = PaymentsRepository(tx.session)
    tenant, kind, obj = event.tenantid, event.data.type, event.data.object
    if kind in ("payment_intent.succeeded", "payment_intent.payment_failed"):
        intent_id = str(obj.get("id", ""))
        payment = None
        meta: dict[str, Any] = obj.get("metadata") or {}
        if meta.get(META_PAYMENT):
            payment = await repo.payment(tenant, str(meta[META_PAYMENT]), lock=True)
        if payment is None:
            payment = await repo.payment_by_stripe(tenant, intent=intent_id)
        if payment is None or payment.attempt is None:
            return  # not one of ours
        collection = await repo.collection(tenant, payment.invoice_id, lock=True)
        if collection is None:
            return
        outcome = service.outcome_of_intent(obj)
        if kind == "payment_intent.payment_failed" and outcome.state != "failed":
            outcome = service.Outcome("failed", intent_id, outcome.charge, "payment_failed", None)
        payment.stripe_payment_intent = payment.stripe_payment_intent or intent_id
        payment.stripe_charge = payment.stripe_charge or outcome.charge
        if payment.attempt != collection.attempts:
            return  # an older attempt: its outcome was recorded when it was superseded
        await add(tx.session, settle(collection, payment, outcome, clock(), schedule))
    elif kind == "charge.refunded":
        payment = await repo.payment_by_stripe(
            tenant, charge=str(obj.get("id", "")), intent=obj.get("payment_intent")
        )
        if payment is None or payment.state != "succeeded":
            return
        total = service.from_stripe_amount(int(obj.get("amount_refunded", 0)), payment.currency)
        if total <= payment.amount_refunded:
            return  # already known (our own refund, or a repeated/out-of-order event)
        if await repo.refund_in_flight(tenant, payment.id):
            return  # our own refund, not recorded yet: it records its amount itself
        delta, payment.amount_refunded = total - payment.amount_refunded, min(total, payment.amount)
        refunds = (obj.get("refunds") or {}).get("data") or []
        refund_id = str(refunds[0]["id"]) if refunds else f"{obj.get('id')}:{total}"
        tx.emit(
            PaymentRefunded(
                source=service.SOURCE,
                subject=payment.invoice_id,
                data=RefundData(
                    refund_id=refund_id,
                    payment_id=payment.id,
                    invoice_id=payment.invoice_id,
                    customer=payment.customer,
                    amount=delta,
                    amount_refunded=payment.amount_refunded,
                    currency=payment.currency,
                ),
                **event.caused(),
            ),
            topic=topics.EVENTS_PAYMENTS,
            key=customer_key(tenant, payment.customer),
        )
    elif kind == "charge.dispute.created":
        payment = await repo.payment_by_stripe(
            tenant, charge=obj.get("charge"), intent=obj.get("payment_intent")
        )
        if payment is None or payment.disputed:
            return
        payment.disputed = True
        tx.emit(
            PaymentDisputed(
                source=service.SOURCE,
                subject=payment.invoice_id,
                data=DisputeData(
                    dispute_id=str(obj.get("id", "")),
                    payment_id=payment.id,
                    invoice_id=payment.invoice_id,
                    customer=payment.customer,
                    amount=service.from_stripe_amount(int(obj.get("amount", 0)), payment.currency),
                    currency=payment.currency,
                    reason=obj.get("reason"),
                ),
                **event.caused(),
            ),
            topic=topics.EVENTS_PAYMENTS,
            key=customer_key(tenant, payment.customer),
        )
