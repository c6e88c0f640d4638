"""The payments repository: every statement of the payments context.

A payment row is written (state ``creating``) before Stripe is called and the collection
is leased (``in_flight`` until ``next_attempt_at``); a lease that runs out means a worker
died between the Stripe call and its commit, and whoever takes the row over looks the
PaymentIntent up before creating another. Claims use ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.payments import OfflinePaymentSpec
from storage.payments.models import (
    Collection,
    Operation,
    Payment,
    Refund,
    StripeAccount,
    StripeCustomer,
    StripeEventSeen,
)
from storage.quarantine import not_quarantined
from workers.payments.service import Attempt, QueuedOperation, Settlement


class PaymentsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- Stripe accounts and customers ---------------------------------------------

    async def account(self, tenant_id: str) -> StripeAccount | None:
        return await self.session.get(StripeAccount, tenant_id)

    async def account_by_token(self, token: str) -> StripeAccount | None:
        q = select(StripeAccount).where(StripeAccount.endpoint_token == token)
        return (await self.session.scalars(q)).one_or_none()

    async def set_account(
        self,
        tenant_id: str,
        *,
        secret_key: str,
        webhook_secret: str,
        auto_collection: bool,
        endpoint_token: str,
        publishable_key: str | None = None,
    ) -> None:
        row = await self.session.get(StripeAccount, tenant_id, with_for_update=True)
        if row is None:
            self.session.add(
                StripeAccount(
                    tenant_id=tenant_id,
                    secret_key=secret_key,
                    webhook_secret=webhook_secret,
                    previous_webhook_secret=None,
                    auto_collection=auto_collection,
                    endpoint_token=endpoint_token,
                    publishable_key=publishable_key,
                )
            )
            return
        if row.webhook_secret != webhook_secret:
            row.previous_webhook_secret = row.webhook_secret
        row.secret_key, row.webhook_secret = secret_key, webhook_secret
        row.auto_collection, row.endpoint_token = auto_collection, endpoint_token
        row.publishable_key = publishable_key
        row.updated_at = func.now()

    async def customer(self, tenant_id: str, customer: str) -> StripeCustomer | None:
        return await self.session.get(StripeCustomer, (tenant_id, customer))

    async def set_payment_method(self, tenant_id: str, customer: str, payment_method: str) -> None:
        """The customer's default payment method (the customer is synced to Stripe)."""
        row = await self.customer(tenant_id, customer)
        assert row is not None
        row.payment_method_id = payment_method

    async def set_customer(self, tenant_id: str, customer: str, stripe_customer_id: str) -> None:
        stmt = insert(StripeCustomer).values(
            tenant_id=tenant_id, customer=customer, stripe_customer_id=stripe_customer_id
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant_id", "customer"],
            set_={"stripe_customer_id": stripe_customer_id, "updated_at": func.now()},
        )
        await self.session.execute(stmt)

    # --- collections and payments -----------------------------------------------------

    async def open_collection(self, c: Collection) -> bool:
        """Start collecting an invoice; False if it was collected or is being collected."""
        stmt = (
            insert(Collection)
            .values(
                tenant_id=c.tenant_id,
                invoice_id=c.invoice_id,
                customer=c.customer,
                amount=c.amount,
                currency=c.currency,
                status=c.status,
                attempts=0,
                next_attempt_at=c.next_attempt_at,
                correlationid=c.correlationid,
            )
            .on_conflict_do_nothing()
            .returning(Collection.invoice_id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def collection(
        self, tenant_id: str, invoice_id: str, *, lock: bool = False
    ) -> Collection | None:
        return await self.session.get(
            Collection, (tenant_id, invoice_id), with_for_update=lock or None
        )

    async def stop_collection(self, tenant_id: str, invoice_id: str) -> None:
        """No more attempts for this invoice (voided, paid, closed). An attempt in flight
        finishes (its Stripe call may have been made) and is recorded."""
        c = await self.collection(tenant_id, invoice_id, lock=True)
        if c is not None and c.status == "due":
            c.status, c.next_attempt_at = "cancelled", None

    async def claim_collections(
        self,
        now: datetime,
        limit: int,
        *,
        job: str,
        only: Sequence[tuple[str, str]] | None = None,
    ) -> Sequence[Collection]:
        """Due collections, and in-flight ones whose lease ran out (their worker died),
        leaving out the invoices ``job`` quarantined; ``only``: just these (tenant, invoice)
        pairs, if they are still due."""
        q = select(Collection).where(
            Collection.status.in_(("due", "in_flight")),
            Collection.next_attempt_at <= now,
            not_quarantined(job, "invoice", Collection.tenant_id, Collection.invoice_id),
        )
        if only is not None:
            q = q.where(tuple_(Collection.tenant_id, Collection.invoice_id).in_(list(only)))
        q = q.order_by(Collection.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
        return list(await self.session.scalars(q))

    async def start_attempt(
        self, c: Collection, *, lease_until: datetime, payment_id: str
    ) -> Attempt:
        """Lease ``c`` until ``lease_until`` and write its attempt's payment row (state
        ``creating``, id ``payment_id``); a lease that ran out resumes the attempt it was
        taken for (its row kept)."""
        resumed = c.status == "in_flight"
        payment = await self.attempt(c.tenant_id, c.invoice_id, c.attempts) if resumed else None
        if payment is None:  # a first attempt, a dunning retry (or a lease without its row)
            resumed = False
            c.attempts += 1
            payment = Payment(
                tenant_id=c.tenant_id,
                id=payment_id,
                invoice_id=c.invoice_id,
                customer=c.customer,
                amount=c.amount,
                currency=c.currency,
                method="card",
                attempt=c.attempts,
                state="creating",
                amount_refunded=0,
                disputed=False,
            )
            self.session.add(payment)
        c.status, c.next_attempt_at = "in_flight", lease_until
        return Attempt(
            c.tenant_id,
            c.invoice_id,
            c.customer,
            c.amount,
            c.currency,
            c.attempts,
            payment.id,
            resumed,
            c.correlationid,
        )

    @staticmethod
    def settle(c: Collection, payment: Payment, s: Settlement, now: datetime) -> None:
        """Apply a settlement (``service.settle``) to the payment and its collection."""
        payment.state, payment.updated_at = s.payment_state, now
        if s.failed:
            payment.failure_code, payment.failure_message = s.failure_code, s.failure_message
        c.status, c.next_attempt_at = s.collection_status, s.next_attempt_at

    @staticmethod
    def close_collection(c: Collection, status: str) -> None:
        """No more attempts: ``settled`` (an offline payment covered it), …"""
        c.status, c.next_attempt_at = status, None

    @staticmethod
    def link_stripe(
        payment: Payment, intent: str | None, charge: str | None, *, keep: bool
    ) -> None:
        """Note the PaymentIntent and charge Stripe named for ``payment``: ``keep`` what is
        noted already (a webhook), or prefer what Stripe just said (the attempt's answer)."""
        if keep:
            payment.stripe_payment_intent = payment.stripe_payment_intent or intent
            payment.stripe_charge = payment.stripe_charge or charge
        else:
            payment.stripe_payment_intent = intent or payment.stripe_payment_intent
            payment.stripe_charge = charge or payment.stripe_charge

    @staticmethod
    def set_refunded(payment: Payment, amount_refunded: int) -> None:
        payment.amount_refunded = amount_refunded

    @staticmethod
    def mark_disputed(payment: Payment) -> None:
        payment.disputed = True

    async def payment(
        self, tenant_id: str, payment_id: str, *, lock: bool = False
    ) -> Payment | None:
        return await self.session.get(
            Payment, (tenant_id, payment_id), with_for_update=lock or None
        )

    async def attempt(self, tenant_id: str, invoice_id: str, attempt: int) -> Payment | None:
        q = select(Payment).where(
            Payment.tenant_id == tenant_id,
            Payment.invoice_id == invoice_id,
            Payment.attempt == attempt,
        )
        return (await self.session.scalars(q)).one_or_none()

    async def payment_by_stripe(
        self, tenant_id: str, *, intent: str | None = None, charge: str | None = None
    ) -> Payment | None:
        conditions = []
        if intent:
            conditions.append(Payment.stripe_payment_intent == intent)
        if charge:
            conditions.append(Payment.stripe_charge == charge)
        if not conditions:
            return None
        q = (
            select(Payment)
            .where(Payment.tenant_id == tenant_id, or_(*conditions))
            .with_for_update()
        )
        return (await self.session.scalars(q)).first()

    async def payments_of_invoice(self, tenant_id: str, invoice_id: str) -> Sequence[Payment]:
        q = (
            select(Payment)
            .where(Payment.tenant_id == tenant_id, Payment.invoice_id == invoice_id)
            .order_by(Payment.created_at, Payment.attempt)
        )
        return list(await self.session.scalars(q))

    async def add_offline_payment(self, tenant_id: str, d: OfflinePaymentSpec) -> bool:
        """Record a payment made outside Stripe; False if a payment with its id exists (a
        repeated command)."""
        if await self.session.get(Payment, (tenant_id, d.payment_id)) is not None:
            return False
        self.session.add(
            Payment(
                tenant_id=tenant_id,
                id=d.payment_id,
                invoice_id=d.invoice_id,
                customer=d.customer,
                amount=d.amount,
                currency=d.currency,
                method=d.method,
                attempt=None,
                state="succeeded",
                reference=d.reference,
                amount_refunded=0,
                disputed=False,
            )
        )
        await self.session.flush()
        return True

    # --- refunds ----------------------------------------------------------------------

    async def refund(self, tenant_id: str, refund_id: str) -> Refund | None:
        return await self.session.get(Refund, (tenant_id, refund_id))

    async def record_refund(
        self,
        tenant_id: str,
        *,
        refund_id: str,
        payment_id: str,
        amount: int,
        reason: str | None,
        stripe_refund_id: str | None,
        correlationid: str | None,
    ) -> Payment:
        """A refund made (in Stripe, or of an offline payment): its row, and the payment's
        refunded amount (at most the payment's amount). The payment, updated."""
        payment = await self.payment(tenant_id, payment_id, lock=True)
        assert payment is not None
        payment.amount_refunded = min(payment.amount, payment.amount_refunded + amount)
        self.session.add(
            Refund(
                tenant_id=tenant_id,
                id=refund_id,
                payment_id=payment.id,
                amount=amount,
                reason=reason,
                state="succeeded",
                stripe_refund_id=stripe_refund_id,
                correlationid=correlationid,
            )
        )
        return payment

    async def refunds_of(self, tenant_id: str, payment_id: str) -> Sequence[Refund]:
        q = (
            select(Refund)
            .where(Refund.tenant_id == tenant_id, Refund.payment_id == payment_id)
            .order_by(Refund.created_at)
        )
        return list(await self.session.scalars(q))

    # --- operations (commands that call Stripe) ----------------------------------------

    async def queue_operation(self, tenant_id: str, id: str, type: str, command: Any) -> None:
        stmt = insert(Operation).values(
            tenant_id=tenant_id, id=id, type=type, command=command, state="pending"
        )
        await self.session.execute(stmt.on_conflict_do_nothing())

    async def claim_operations(
        self,
        now: datetime,
        limit: int,
        *,
        job: str,
        only: Sequence[tuple[str, str]] | None = None,
    ) -> Sequence[Operation]:
        """Pending operations, and in-flight ones whose lease ran out, leaving out those
        ``job`` quarantined; ``only``: just these (tenant, id) pairs, if still open."""
        q = select(Operation).where(
            or_(
                Operation.state == "pending",
                (Operation.state == "in_flight") & (Operation.lease_until <= now),
            ),
            not_quarantined(job, "payment_operation", Operation.tenant_id, Operation.id),
        )
        if only is not None:
            q = q.where(tuple_(Operation.tenant_id, Operation.id).in_(list(only)))
        q = q.order_by(Operation.created_at).limit(limit).with_for_update(skip_locked=True)
        return list(await self.session.scalars(q))

    @staticmethod
    def lease_operations(ops: Sequence[Operation], until: datetime) -> list[QueuedOperation]:
        """Lease claimed operations until ``until``; what each is to do."""
        leased = []
        for op in ops:
            leased.append(
                QueuedOperation(op.tenant_id, op.id, op.type, op.command, op.state != "pending")
            )
            op.state, op.lease_until = "in_flight", until
        return leased

    @staticmethod
    def finish_operation(op: Operation) -> None:
        op.state, op.lease_until = "done", None

    async def refund_in_flight(self, tenant_id: str, payment_id: str) -> bool:
        q = select(Operation.id).where(
            Operation.tenant_id == tenant_id,
            Operation.type == "payments.refund",
            Operation.state != "done",
            Operation.command["data"]["payment_id"].astext == payment_id,
        )
        return (await self.session.scalars(q.limit(1))).first() is not None

    async def operation(self, tenant_id: str, id: str) -> Operation | None:
        return await self.session.get(Operation, (tenant_id, id), with_for_update=True)

    # --- Stripe events (ingress dedupe) -----------------------------------------------

    async def first_sighting(self, tenant_id: str, event_id: str, type: str) -> bool:
        stmt = (
            insert(StripeEventSeen)
            .values(tenant_id=tenant_id, event_id=event_id, type=type)
            .on_conflict_do_nothing()
            .returning(StripeEventSeen.event_id)
        )
        return (await self.session.execute(stmt)).first() is not None
