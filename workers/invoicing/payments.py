"""Payments against invoices: recorded once per payment id; a covered invoice is paid.
An invoice whose dunning is exhausted becomes uncollectible."""

from __future__ import annotations

from schemas.invoicing import (
    InvoiceMarkedUncollectible,
    InvoicePaid,
    InvoicePaymentRecorded,
    InvoiceRefunded,
)
from schemas.payments import DunningExhausted, PaymentRefunded, PaymentSucceeded
from storage.db import AsyncSession
from storage.invoicing import InvoicePayment, InvoicingRepository
from workers.invoicing import service
from workers.invoicing.billing import SOURCE, Work, customer_key, line_models, values


async def record(session: AsyncSession, work: Work, event: PaymentSucceeded) -> str | None:
    """Apply ``payment.succeeded``; returns why it cannot be used (it is dead-lettered)."""
    repo = InvoicingRepository(session)
    p, tenant = event.data, event.tenantid
    invoice = await repo.invoice(tenant, p.invoice_id, lock=True)
    if invoice is None:
        return f"no invoice {p.invoice_id!r}"
    if p.currency != invoice.currency:
        return f"payment in {p.currency} for an invoice in {invoice.currency}"
    if invoice.status in ("draft", "void"):
        return f"invoice {invoice.id} is {invoice.status}: it cannot take payments"
    payment = InvoicePayment(
        tenant_id=tenant,
        payment_id=p.payment_id,
        invoice_id=invoice.id,
        amount=p.amount,
        currency=p.currency,
        method=p.method,
    )
    if not await repo.add_payment(payment):
        return None  # recorded before (the same payment in another event)
    invoice.amount_paid += p.amount
    paid = service.becomes_paid(invoice.status, invoice.total, invoice.amount_paid)
    if paid:
        invoice.status, invoice.paid_at = "paid", event.time
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    lines = line_models((await repo.lines([invoice.id]))[invoice.id])
    view = service.invoice_data(values(invoice), customer.external_id, lines)
    cls = InvoicePaid if paid else InvoicePaymentRecorded
    work.emit(
        cls(source=SOURCE, subject=invoice.id, data=view, **event.caused()),
        customer_key(tenant, customer.external_id),
    )
    return None


async def uncollectible(session: AsyncSession, work: Work, event: DunningExhausted) -> None:
    """``payment.dunning_exhausted``: a finalized invoice becomes uncollectible (an invoice
    paid, voided or already uncollectible meanwhile stays as it is)."""
    repo = InvoicingRepository(session)
    tenant = event.tenantid
    invoice = await repo.invoice(tenant, event.data.invoice_id, lock=True)
    if invoice is None or invoice.status != "finalized":
        return
    invoice.status, invoice.closed_at = "uncollectible", event.time
    invoice.status_reason = f"dunning exhausted after {event.data.attempts} attempts"
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    lines = line_models((await repo.lines([invoice.id]))[invoice.id])
    view = service.invoice_data(values(invoice), customer.external_id, lines)
    work.emit(
        InvoiceMarkedUncollectible(source=SOURCE, subject=invoice.id, data=view, **event.caused()),
        customer_key(tenant, customer.external_id),
    )


async def refunded(session: AsyncSession, work: Work, event: PaymentRefunded) -> None:
    """``payment.refunded``: listed with the invoice's payments (a negative amount, method
    ``refund``) and added to ``amount_refunded``, once per refund id. The status stays: a
    paid invoice that was refunded was still paid."""
    repo = InvoicingRepository(session)
    r, tenant = event.data, event.tenantid
    invoice = await repo.invoice(tenant, r.invoice_id, lock=True)
    if invoice is None:
        return
    row = InvoicePayment(
        tenant_id=tenant,
        payment_id=r.refund_id,
        invoice_id=invoice.id,
        amount=-r.amount,
        currency=r.currency,
        method="refund",
    )
    if not await repo.add_payment(row):
        return
    invoice.amount_refunded += r.amount
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    lines = line_models((await repo.lines([invoice.id]))[invoice.id])
    view = service.invoice_data(values(invoice), customer.external_id, lines)
    work.emit(
        InvoiceRefunded(source=SOURCE, subject=invoice.id, data=view, **event.caused()),
        customer_key(tenant, customer.external_id),
    )
