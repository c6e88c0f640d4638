"""The payments documents receipts attest, as their events carried them, for
``billstream receipts audit``: succeeded payments (``PaymentData``, what
``payment.succeeded`` says) and succeeded refunds (``RefundData``, what
``payment.refunded`` says), by id or by pages of ids.

A refund made in Stripe itself (its dashboard) is reported by ``charge.refunded`` and has
no refund row: it is not found here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from schemas.payments import PaymentData, RefundData
from storage.payments.attested import SUCCEEDED, AttestedPayments
from workers.runtime import Tx

#: ids per page of ``succeeded_documents``
PAGE = 500


async def attested_payments(tx: Tx, tenant_id: str, ids: Sequence[str]) -> dict[str, PaymentData]:
    """These succeeded payments of the tenant by id; an id with none is left out."""
    found = await tx.repo(AttestedPayments).payments(tenant_id, ids)
    return {
        p.id: PaymentData(
            payment_id=p.id,
            invoice_id=p.invoice_id,
            customer=p.customer,
            amount=p.amount,
            currency=p.currency,
            method=p.method,
        )
        for p in found
        if p.state == SUCCEEDED
    }


async def attested_refunds(tx: Tx, tenant_id: str, ids: Sequence[str]) -> dict[str, RefundData]:
    """These succeeded refunds of the tenant by id (invoice, customer and currency are
    their payment's); an id with none is left out. ``amount_refunded`` (what the payment's
    refunds add up to) is as of now, not as of the refund."""
    found = await tx.repo(AttestedPayments).refunds(tenant_id, ids)
    return {
        r.id: RefundData(
            refund_id=r.id,
            payment_id=p.id,
            invoice_id=p.invoice_id,
            customer=p.customer,
            amount=r.amount,
            amount_refunded=max(p.amount_refunded, r.amount),
            currency=p.currency,
        )
        for r, p in found
        if r.state == SUCCEEDED
    }


async def succeeded_documents(
    tx: Tx,
    tenant_id: str,
    kind: Literal["payment", "refund"],
    after: str | None = None,
    limit: int = PAGE,
) -> tuple[list[str], str | None]:
    """The ids of the tenant's next ``limit`` succeeded payments or refunds after the
    cursor ``after``, and the cursor to read on from (None: that was the last page)."""
    repo = tx.repo(AttestedPayments)
    page = await (repo.payment_page if kind == "payment" else repo.refund_page)(
        tenant_id, after, limit
    )
    return page, (page[-1] if len(page) == limit else None)
