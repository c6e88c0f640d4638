"""What invoicing does with payment events, given one transaction: a payment is recorded
once per payment id and a covered invoice is paid; a refund is listed with the invoice's
payments; an invoice whose dunning is exhausted becomes uncollectible."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from schemas import topics
from schemas.envelope import CloudEvent
from schemas.invoicing import (
    InvoiceMarkedUncollectible,
    InvoicePaid,
    InvoicePaymentRecorded,
    InvoiceRefunded,
)
from schemas.payments import DunningExhausted, PaymentRefunded, PaymentSucceeded
from storage.invoicing import Invoice, InvoicingRepository
from workers.invoicing import ledger, service, views
from workers.runtime import Tx


async def _emit(tx: Tx, cls: service.InvoiceEvent, invoice: Invoice, cause: CloudEvent) -> None:
    """Emit ``cls`` with ``invoice`` as it is now, caused by ``cause``."""
    repo = tx.repo(InvoicingRepository)
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    lines = (await repo.lines([invoice.id]))[invoice.id]
    data = views.invoice_data(invoice, customer.external_id, lines)
    tx.emit(
        service.invoice_event(cls, data, **cause.caused()),
        topic=topics.EVENTS_INVOICING,
        key=topics.partition_key(cause.tenantid, customer.external_id),
    )


async def succeeded(event: PaymentSucceeded, tx: Tx) -> str | None:
    """Apply ``payment.succeeded``; returns why it cannot be used (it is dead-lettered)."""
    repo = tx.repo(InvoicingRepository)
    p, tenant = event.data, event.tenantid
    invoice = await repo.invoice(tenant, p.invoice_id, lock=True)
    if invoice is None:
        return f"no invoice {p.invoice_id!r}"
    if p.currency != invoice.currency:
        return f"payment in {p.currency} for an invoice in {invoice.currency}"
    if invoice.status in ("draft", "void"):
        return f"invoice {invoice.id} is {invoice.status}: it cannot take payments"
    if not await repo.add_payment(tenant, p.payment_id, invoice.id, p.amount, p.currency, p.method):
        return None  # recorded before (the same payment in another event)
    due = invoice.total - (invoice.amount_credited or 0)  # credit notes took this off
    paid = service.becomes_paid(invoice.status, due, invoice.amount_paid + p.amount)
    await repo.apply_payment(invoice, p.amount, event.time if paid else None)
    await _emit(tx, InvoicePaid if paid else InvoicePaymentRecorded, invoice, event)
    if paid and invoice.subscription_id is None:  # a top-up: its grant takes effect
        customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
        await ledger.top_up_paid(tx, invoice, customer, event.time, event)
    return None


async def dunning_exhausted(event: DunningExhausted, tx: Tx) -> str | None:
    """``payment.dunning_exhausted``: a finalized invoice becomes uncollectible (an invoice
    paid, voided or already uncollectible meanwhile stays as it is)."""
    repo = tx.repo(InvoicingRepository)
    invoice = await repo.invoice(event.tenantid, event.data.invoice_id, lock=True)
    if invoice is None or invoice.status != "finalized":
        return None
    reason = f"dunning exhausted after {event.data.attempts} attempts"
    await repo.close_invoice(invoice, "uncollectible", event.time, reason)
    await _emit(tx, InvoiceMarkedUncollectible, invoice, event)
    return None


async def refunded(event: PaymentRefunded, tx: Tx) -> str | None:
    """``payment.refunded``: listed with the invoice's payments (a negative amount, method
    ``refund``) and added to ``amount_refunded``, once per refund id. The status stays: a
    paid invoice that was refunded was still paid."""
    repo = tx.repo(InvoicingRepository)
    r, tenant = event.data, event.tenantid
    invoice = await repo.invoice(tenant, r.invoice_id, lock=True)
    if invoice is None:
        return None
    if not await repo.add_payment(tenant, r.refund_id, invoice.id, -r.amount, r.currency, "refund"):
        return None
    await repo.apply_refund(invoice, r.amount)
    await _emit(tx, InvoiceRefunded, invoice, event)
    return None


# payment event type -> what it does; a handler returns why the event cannot be used (it
# is dead-lettered), or None. Other payment events are not for invoicing.
PAYMENT_EVENTS: dict[type[Any], Callable[[Any, Tx], Awaitable[str | None]]] = {
    PaymentSucceeded: succeeded,
    DunningExhausted: dunning_exhausted,
    PaymentRefunded: refunded,
}
