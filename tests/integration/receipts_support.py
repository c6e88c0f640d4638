"""Receipts test helpers: settings with a secrets key, synthetic documents on the events
topics (as invoicing and payments publish them), and reads of what was issued."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import select

from schemas import topics
from schemas.envelope import CloudEvent
from schemas.invoicing import InvoiceData, InvoiceFinalized, InvoiceLine
from schemas.payments import PaymentData, PaymentRefunded, PaymentSucceeded, RefundData
from storage.receipts import ReceiptKeyRow, ReceiptRow
from tests.integration.support import Sessions
from workers.settings import Settings

PERIOD = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


def with_secrets(settings: Settings) -> Settings:
    return settings.model_copy(update={"secrets_key": SecretStr(Fernet.generate_key().decode())})


def invoice_finalized(tenant: str, customer: str, invoice_id: str, total: int) -> InvoiceFinalized:
    line = InvoiceLine(
        price_key="base",
        kind="flat",
        description="Base fee",
        period_start=PERIOD[0],
        period_end=PERIOD[1],
        quantity=1,  # type: ignore[arg-type]
        tiers=[],
        proration=1,  # type: ignore[arg-type]
        minimum_applied=False,
        amount=total,
    )
    data = InvoiceData(
        invoice_id=invoice_id,
        number=f"INV-2026-{invoice_id}",
        status="finalized",
        customer=customer,
        currency="EUR",
        period_start=PERIOD[0],
        period_end=PERIOD[1],
        subtotal=total,
        tax=0,
        total=total,
        amount_paid=0,
        amount_due=total,
        lines=[line],
    )
    return InvoiceFinalized(source="tests", tenantid=tenant, subject=invoice_id, data=data)


def payment_succeeded(
    tenant: str, customer: str, payment_id: str, invoice_id: str, amount: int
) -> PaymentSucceeded:
    data = PaymentData(
        payment_id=payment_id,
        invoice_id=invoice_id,
        customer=customer,
        amount=amount,
        currency="EUR",
    )
    return PaymentSucceeded(source="tests", tenantid=tenant, subject=invoice_id, data=data)


def payment_refunded(
    tenant: str, customer: str, refund_id: str, payment_id: str, invoice_id: str, amount: int
) -> PaymentRefunded:
    data = RefundData(
        refund_id=refund_id,
        payment_id=payment_id,
        invoice_id=invoice_id,
        customer=customer,
        amount=amount,
        amount_refunded=amount,
        currency="EUR",
    )
    return PaymentRefunded(source="tests", tenantid=tenant, subject=invoice_id, data=data)


def topic_of(event: CloudEvent) -> str:
    if isinstance(event, PaymentSucceeded | PaymentRefunded):
        return topics.EVENTS_PAYMENTS
    return topics.EVENTS_INVOICING


def key_of(event: CloudEvent) -> bytes:
    data: Any = event.data
    return topics.partition_key(event.tenantid, data.customer).encode()


async def receipts_of(
    sessions: Sessions, tenant: str, customer: str | None = None
) -> list[ReceiptRow]:
    """The tenant's receipts (one customer's, if given) in chain order."""
    async with sessions() as db:
        q = select(ReceiptRow).where(ReceiptRow.tenant_id == tenant)
        if customer is not None:
            q = q.where(ReceiptRow.customer == customer)
        return list(await db.scalars(q.order_by(ReceiptRow.customer, ReceiptRow.seq)))


async def keys_of(sessions: Sessions, tenant: str) -> list[ReceiptKeyRow]:
    async with sessions() as db:
        q = select(ReceiptKeyRow).where(ReceiptKeyRow.tenant_id == tenant)
        return list(await db.scalars(q.order_by(ReceiptKeyRow.not_before)))
