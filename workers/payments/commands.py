"""Payments commands applied in the command transaction (no Stripe call): Stripe settings
and offline payments. The ones that call Stripe are in operations.py. Each returns the
command's result or raises a ``PaymentsError``."""

from __future__ import annotations

from typing import Any

from schemas import topics
from schemas.payments import (
    ConfigureStripe,
    PaymentData,
    PaymentSucceeded,
    RecordOfflinePayment,
)
from storage.db import AsyncSession
from storage.payments import Payment, PaymentsRepository
from workers.payments import service
from workers.payments.collector import customer_key
from workers.payments.errors import Conflict
from workers.runtime.tx import Tx

Result = dict[str, Any]


class Commands:
    def __init__(self, session: AsyncSession, tx: Tx) -> None:
        self.session = session
        self.tx = tx
        self.repo = PaymentsRepository(session)

    async def apply(self, cmd: Any) -> Result:
        handler = getattr(self, f"_{type(cmd).__name__}")
        result: Result = await handler(cmd)
        return result

    async def _ConfigureStripe(self, cmd: ConfigureStripe) -> Result:
        d = cmd.data
        await self.repo.set_account(
            cmd.tenantid,
            secret_key=d.secret_key,
            webhook_secret=d.webhook_secret,
            auto_collection=d.auto_collection,
            endpoint_token=d.endpoint_token,
        )
        return {"auto_collection": d.auto_collection, "configured": True}  # never a secret

    async def _RecordOfflinePayment(self, cmd: RecordOfflinePayment) -> Result:
        d = cmd.data
        payment = Payment(
            tenant_id=cmd.tenantid,
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
        if not await self.repo.add_payment(payment):
            raise Conflict(f"payment {d.payment_id!r} exists", field="payment_id")
        collection = await self.repo.collection(cmd.tenantid, d.invoice_id, lock=True)
        open_ = ("due", "awaiting", "in_flight")
        if collection is not None and collection.status in open_ and d.amount >= collection.amount:
            collection.status, collection.next_attempt_at = "settled", None
        event = PaymentSucceeded(
            source=service.SOURCE,
            subject=d.invoice_id,
            data=PaymentData(
                payment_id=d.payment_id,
                invoice_id=d.invoice_id,
                customer=d.customer,
                amount=d.amount,
                currency=d.currency,
                method=d.method,
            ),
            **cmd.caused(),
        )
        self.tx.emit(
            event, topic=topics.EVENTS_PAYMENTS, key=customer_key(cmd.tenantid, d.customer)
        )
        return {"payment_id": d.payment_id, "invoice_id": d.invoice_id, "amount": d.amount}
