"""What each verified Stripe event does, by Stripe event type (``STRIPE_EVENTS``): a
PaymentIntent's outcome settles its attempt, a refund or a dispute made in Stripe becomes a
payment event. Never moving a payment backwards; any other Stripe event type is ignored. A
handler is ``f(event, tx, dunning)``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from schemas import topics
from schemas.payments import StripeEventReceived
from storage.payments import PaymentsRepository
from workers.payments import service
from workers.payments.gateway import META_PAYMENT
from workers.runtime.tx import Tx


async def intent_settled(event: StripeEventReceived, tx: Tx, dunning: service.Dunning) -> None:
    """``payment_intent.succeeded`` / ``payment_intent.payment_failed``: the outcome of the
    attempt it was created for, if that is still the collection's current attempt."""
    repo = tx.repo(PaymentsRepository)
    tenant, obj = event.tenantid, event.data.object
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
    if event.data.type == "payment_intent.payment_failed" and outcome.state != "failed":
        outcome = service.Outcome("failed", intent_id, outcome.charge, "payment_failed", None)
    repo.link_stripe(payment, intent_id, outcome.charge, keep=True)
    if payment.attempt != collection.attempts:
        return  # an older attempt: its outcome was recorded when it was superseded
    now = dunning.clock()
    settled = service.settle(collection, payment, outcome, now, dunning.schedule_days)
    if settled is not None:
        repo.settle(collection, payment, settled, now)
        for e in settled.events:
            tx.emit(e, topic=topics.EVENTS_PAYMENTS, key=service.key_of(e))


async def charge_refunded(event: StripeEventReceived, tx: Tx, dunning: service.Dunning) -> None:
    """A refund made in Stripe (the dashboard, say); ours record their amounts themselves."""
    repo = tx.repo(PaymentsRepository)
    tenant, obj = event.tenantid, event.data.object
    payment = await repo.payment_by_stripe(
        tenant, charge=str(obj.get("id", "")), intent=obj.get("payment_intent")
    )
    if payment is None or payment.state != "succeeded":
        return
    refund_id, total = service.stripe_refund(obj, payment.currency)
    if total <= payment.amount_refunded:
        return  # already known (our own refund, or a repeated/out-of-order event)
    if await repo.refund_in_flight(tenant, payment.id):
        return  # our own refund, not recorded yet: it records its amount itself
    delta = total - payment.amount_refunded
    repo.set_refunded(payment, min(total, payment.amount))
    refunded = service.payment_refunded(payment, refund_id, delta, event)
    tx.emit(refunded, topic=topics.EVENTS_PAYMENTS, key=service.key_of(refunded))


async def dispute_created(event: StripeEventReceived, tx: Tx, dunning: service.Dunning) -> None:
    repo = tx.repo(PaymentsRepository)
    tenant, obj = event.tenantid, event.data.object
    payment = await repo.payment_by_stripe(
        tenant, charge=obj.get("charge"), intent=obj.get("payment_intent")
    )
    if payment is None or payment.disputed:
        return
    repo.mark_disputed(payment)
    disputed = service.payment_disputed(payment, obj, event)
    tx.emit(disputed, topic=topics.EVENTS_PAYMENTS, key=service.key_of(disputed))


Handler = Callable[[StripeEventReceived, Tx, service.Dunning], Awaitable[None]]

STRIPE_EVENTS: dict[str, Handler] = {
    "payment_intent.succeeded": intent_settled,
    "payment_intent.payment_failed": intent_settled,
    "charge.refunded": charge_refunded,
    "charge.dispute.created": dispute_created,
}
