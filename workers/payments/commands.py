"""What each payments command does, by command type.

``COMMANDS``: the commands applied in the command consumer's transaction (no Stripe call):
Stripe settings and offline payments; a handler is ``f(cmd, tx)`` → the command's result,
or it raises a ``PaymentsError``.

``STRIPE_COMMANDS``: the commands that call Stripe (customer sync, payment methods,
refunds). The command consumer only queues them; the operations job (jobs.py) performs one
with no transaction open (``f(cmd, stripe)``: reads in a step of their own, then Stripe)
and gets back the step that records it (``finish(tx)`` → the command's result), run in the
transaction that also records the command's outcome.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from schemas import topics
from schemas.payments import (
    AttachPaymentMethod,
    ConfigureStripe,
    PayInvoice,
    RecordOfflinePayment,
    RefundPayment,
    SyncCustomer,
)
from storage.payments import Collection, PaymentsRepository, StripeCustomer
from workers.payments import service
from workers.payments.errors import Conflict, NotFound
from workers.payments.gateway import Gateway
from workers.runtime.tx import Tx

Result = dict[str, Any]
R = TypeVar("R")


async def configure_stripe(cmd: ConfigureStripe, tx: Tx) -> Result:
    d = cmd.data
    await tx.repo(PaymentsRepository).set_account(
        cmd.tenantid,
        secret_key=d.secret_key,
        webhook_secret=d.webhook_secret,
        auto_collection=d.auto_collection,
        endpoint_token=d.endpoint_token,
        publishable_key=d.publishable_key,
    )
    return {"auto_collection": d.auto_collection, "configured": True}  # never a secret


async def record_offline_payment(cmd: RecordOfflinePayment, tx: Tx) -> Result:
    d = cmd.data
    repo = tx.repo(PaymentsRepository)
    if not await repo.add_offline_payment(cmd.tenantid, d):
        raise Conflict(f"payment {d.payment_id!r} exists", field="payment_id")
    collection = await repo.collection(cmd.tenantid, d.invoice_id, lock=True)
    if collection is not None and service.offline_settles(
        collection.status, collection.amount, d.amount
    ):
        repo.close_collection(collection, "settled")
    event = service.offline_payment_succeeded(cmd)
    tx.emit(event, topic=topics.EVENTS_PAYMENTS, key=service.key_of(event))
    return {"payment_id": d.payment_id, "invoice_id": d.invoice_id, "amount": d.amount}


Handler = Callable[[Any, Tx], Awaitable[Result]]

COMMANDS: dict[type[Any], Handler] = {
    ConfigureStripe: configure_stripe,
    RecordOfflinePayment: record_offline_payment,
}


# --- commands that call Stripe ---------------------------------------------------------------


@dataclass(frozen=True)
class Stripe:
    """What a command that calls Stripe may use, outside any transaction: ``read`` runs a
    step in a transaction of its own (a job step), ``gateway`` is a tenant's Stripe account
    (``NotConfigured`` without one), ``resumed`` says a lease ran out (look for what the dead
    worker may have done in Stripe before doing it again)."""

    read: Callable[[Callable[[Tx], Awaitable[Any]]], Awaitable[Any]]
    gateway: Callable[[str], Awaitable[Gateway]]
    resumed: bool
    clock: service.Clock = service.utcnow

    async def query(self, step: Callable[[Tx], Awaitable[R]]) -> R:
        result: R = await self.read(step)
        return result


Finish = Callable[[Tx], Awaitable[Result]]


async def _customer(tx: Tx, tenant: str, customer: str) -> StripeCustomer | None:
    return await tx.repo(PaymentsRepository).customer(tenant, customer)


async def sync_customer(cmd: SyncCustomer, stripe: Stripe) -> Finish:
    d, tenant = cmd.data, cmd.tenantid
    existing = await stripe.query(
        lambda tx: tx.repo(PaymentsRepository).customer(tenant, d.customer)
    )
    if existing is not None:
        stripe_id = existing.stripe_customer_id
    else:
        gateway = await stripe.gateway(tenant)
        found = await gateway.find_customer(tenant, d.customer) if stripe.resumed else None
        stripe_id = found or await gateway.create_customer(tenant, d.customer, d.email, d.name)

    async def finish(tx: Tx) -> Result:
        await tx.repo(PaymentsRepository).set_customer(tenant, d.customer, stripe_id)
        return {"customer": d.customer, "stripe_customer_id": stripe_id}

    return finish


async def _stripe_customer(
    stripe: Stripe, tenant: str, customer: str, email: str | None, name: str | None
) -> tuple[str, bool]:
    """The customer's Stripe id, and whether it was created now (the customer made in Stripe
    if it was not there: a resumed operation looks for the one it may have made first)."""
    mapping = await stripe.query(lambda tx: _customer(tx, tenant, customer))
    if mapping is not None:
        return mapping.stripe_customer_id, False
    gateway = await stripe.gateway(tenant)
    found = await gateway.find_customer(tenant, customer) if stripe.resumed else None
    return found or await gateway.create_customer(tenant, customer, email, name), True


async def attach_payment_method(cmd: AttachPaymentMethod, stripe: Stripe) -> Finish:
    d, tenant = cmd.data, cmd.tenantid
    if d.create_customer:
        stripe_id, created = await _stripe_customer(stripe, tenant, d.customer, None, None)
    else:
        mapping = await stripe.query(lambda tx: _customer(tx, tenant, d.customer))
        if mapping is None:
            raise NotFound(f"customer {d.customer!r} is not synced to Stripe", field="customer")
        stripe_id, created = mapping.stripe_customer_id, False
    gateway = await stripe.gateway(tenant)
    await gateway.attach(d.payment_method, stripe_id)  # again is harmless

    async def finish(tx: Tx) -> Result:
        repo = tx.repo(PaymentsRepository)
        if created:
            await repo.set_customer(tenant, d.customer, stripe_id)
        await repo.set_payment_method(tenant, d.customer, d.payment_method)
        return {"customer": d.customer, "payment_method": d.payment_method}

    return finish


# a collection in one of these is being charged or is paid: paying again changes nothing
_UNDERWAY = frozenset({"in_flight", "awaiting", "succeeded", "settled"})


async def pay_invoice(cmd: PayInvoice, stripe: Stripe) -> Finish:
    """The card is attached and made the default (the customer created in Stripe if it was
    not), then the invoice's collection is made due now — opened for the amount the page
    showed if it had none — and the collector charges it (jobs.py), with the same attempt
    rows, leases and idempotency as every collection: a second Pay finds the collection
    underway and changes nothing. A card Stripe refuses to attach fails the command with
    Stripe's message; a charge declined later is ``payment.failed`` and dunning, as any."""
    d, tenant = cmd.data, cmd.tenantid
    stripe_id, created = await _stripe_customer(stripe, tenant, d.customer, d.email, d.name)
    gateway = await stripe.gateway(tenant)
    await gateway.attach(d.payment_method, stripe_id)

    async def finish(tx: Tx) -> Result:
        repo = tx.repo(PaymentsRepository)
        if created:
            await repo.set_customer(tenant, d.customer, stripe_id)
        await repo.set_payment_method(tenant, d.customer, d.payment_method)
        now = stripe.clock()
        c = await repo.collection(tenant, d.invoice_id, lock=True)
        if c is None:
            await repo.open_collection(
                Collection(
                    tenant_id=tenant,
                    invoice_id=d.invoice_id,
                    customer=d.customer,
                    amount=d.amount,
                    currency=d.currency,
                    status="due",
                    next_attempt_at=now,
                    correlationid=cmd.correlationid or cmd.id,
                )
            )
            status = "due"
        elif c.status in _UNDERWAY:
            status = c.status
        else:  # due (a retry waiting), exhausted, cancelled: charge it now with this card
            c.status, c.next_attempt_at = "due", now
            status = "due"
        return {
            "invoice_id": d.invoice_id,
            "payment_method": d.payment_method,
            "collection": status,
        }

    return finish


async def refund_payment(cmd: RefundPayment, stripe: Stripe) -> Finish:
    d, tenant = cmd.data, cmd.tenantid

    async def read(tx: Tx) -> Any:
        repo = tx.repo(PaymentsRepository)
        if await repo.refund(tenant, d.refund_id) is not None:
            raise Conflict(f"refund {d.refund_id!r} exists", field="refund_id")
        return await repo.payment(tenant, d.payment_id)

    payment = await stripe.query(read)
    if payment is None or payment.state != "succeeded":
        raise NotFound(f"no succeeded payment {d.payment_id!r}", field="payment_id")
    remaining = payment.amount - payment.amount_refunded
    amount = d.amount if d.amount is not None else remaining
    if amount <= 0 or amount > remaining:
        raise Conflict(f"at most {remaining} can be refunded", field="amount")
    stripe_refund: str | None = None
    if payment.method == "card":
        if payment.stripe_payment_intent is None:
            raise Conflict("the payment has no PaymentIntent", field="payment_id")
        gateway = await stripe.gateway(tenant)
        intent = payment.stripe_payment_intent
        if stripe.resumed:
            stripe_refund = await gateway.find_refund(intent, d.refund_id)
        if stripe_refund is None:
            stripe_amount = service.to_stripe_amount(amount, payment.currency)
            stripe_refund = await gateway.refund(intent, stripe_amount, d.refund_id)

    async def finish(tx: Tx) -> Result:
        refunded = await tx.repo(PaymentsRepository).record_refund(
            tenant,
            refund_id=d.refund_id,
            payment_id=d.payment_id,
            amount=amount,
            reason=d.reason,
            stripe_refund_id=stripe_refund,
            correlationid=cmd.correlationid,
        )
        event = service.payment_refunded(refunded, d.refund_id, amount, cmd)
        tx.emit(event, topic=topics.EVENTS_PAYMENTS, key=service.key_of(event))
        return {"refund_id": d.refund_id, "amount": amount, "stripe_refund_id": stripe_refund}

    return finish


Perform = Callable[[Any, Stripe], Awaitable[Finish]]

STRIPE_COMMANDS: dict[type[Any], Perform] = {
    SyncCustomer: sync_customer,
    AttachPaymentMethod: attach_payment_method,
    RefundPayment: refund_payment,
    PayInvoice: pay_invoice,
}
