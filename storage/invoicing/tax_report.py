"""The tax report's SQL: the documents of one tenant and period, a page at a time.

A page is one statement: four index scans (``ix_invoices_finalized``,
``ix_invoices_voided``, ``ix_credit_notes_issued``, ``ix_credit_notes_voided``, migration
0023), each from the cursor and at most ``limit`` rows, merged by (date, type, id). A big
tenant's year is read page by page (keyset: no OFFSET, nothing skipped or repeated when
documents are added meanwhile), never at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    literal,
    null,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from schemas.tax_report import DocumentType
from storage.invoicing.credit_note_models import CreditNote
from storage.invoicing.models import Customer, Invoice
from storage.tenants import Tenant
from workers.invoicing.tax_report import RANK, Cursor, Document

__all__ = ["TaxReportRepository"]


def _after(date: Any, id: Any, rank: int, cursor: Cursor | None) -> ColumnElement[bool]:
    """(date, rank, id) > cursor, for a branch whose rank is fixed."""
    if cursor is None:
        return literal(True)
    at, at_rank, at_id = cursor
    if rank > at_rank:
        return date >= at  # type: ignore[no-any-return]
    if rank < at_rank:
        return date > at  # type: ignore[no-any-return]
    return tuple_(date, id) > tuple_(at, at_id)


class TaxReportRepository:
    """Every method takes the tenant: no cross-tenant reads."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def _invoices(
        self, tenant_id: str, start: datetime, end: datetime, kind: DocumentType,
        cursor: Cursor | None, limit: int,
    ) -> Select[Any]:  # fmt: skip
        i = Invoice
        date = i.finalized_at if kind == "invoice" else i.closed_at
        where = [i.tenant_id == tenant_id, i.finalized_at.is_not(None), date >= start, date < end]
        if kind == "invoice_void":
            where.append(i.status == "void")
        return (
            select(
                literal(kind).label("kind"),
                literal(RANK[kind]).label("rank"),
                i.id.label("id"),
                i.number.label("number"),
                date.label("date"),
                i.status.label("status"),
                null().label("invoice_number"),
                i.currency.label("currency"),
                i.buyer.label("buyer"),
                i.customer_id.label("customer_id"),
                i.tax_breakdown.label("breakdown"),
                (i.subtotal - i.discount).label("net"),
                i.tax.label("tax"),
                i.tax_rate.label("legacy_rate"),
            )
            .where(*where, _after(date, i.id, RANK[kind], cursor))
            .order_by(date, i.id)
            .limit(limit)
        )

    def _notes(
        self, tenant_id: str, start: datetime, end: datetime, kind: DocumentType,
        cursor: Cursor | None, limit: int,
    ) -> Select[Any]:  # fmt: skip
        n, i = CreditNote, aliased(Invoice)
        date = n.issued_at if kind == "credit_note" else n.voided_at
        return (
            select(
                literal(kind).label("kind"),
                literal(RANK[kind]).label("rank"),
                n.id.label("id"),
                n.number.label("number"),
                date.label("date"),
                n.status.label("status"),
                i.number.label("invoice_number"),
                n.currency.label("currency"),
                i.buyer.label("buyer"),
                n.customer_id.label("customer_id"),
                n.tax_breakdown.label("breakdown"),
                n.subtotal.label("net"),
                n.tax.label("tax"),
                i.tax_rate.label("legacy_rate"),
            )
            .join(i, and_(i.id == n.invoice_id, i.tenant_id == n.tenant_id))
            .where(
                n.tenant_id == tenant_id,
                date >= start,
                date < end,
                _after(date, n.id, RANK[kind], cursor),
            )
            .order_by(date, n.id)
            .limit(limit)
        )

    async def page(
        self,
        tenant_id: str,
        start: datetime,
        end: datetime,
        after: Cursor | None = None,
        limit: int = 500,
    ) -> list[Document]:
        """The first ``limit`` documents of [start, end) after the cursor ``after``, by
        (date, type, id). Fewer than ``limit``: the last page."""
        args = (tenant_id, start, end)
        branches = union_all(
            self._invoices(*args, "invoice", after, limit),
            self._notes(*args, "credit_note", after, limit),
            self._invoices(*args, "invoice_void", after, limit),
            self._notes(*args, "credit_note_void", after, limit),
        ).subquery("documents")
        order = [branches.c.date, branches.c.rank, branches.c.id]
        found = list(await self.session.execute(select(branches).order_by(*order).limit(limit)))
        missing = {r.customer_id for r in found if r.buyer is None}
        customers: dict[str, Customer] = {}
        if missing:
            q = select(Customer).where(Customer.tenant_id == tenant_id, Customer.id.in_(missing))
            customers = {c.id: c for c in await self.session.scalars(q)}
        return [
            Document(
                type=r.kind,
                id=r.id,
                number=r.number or "",
                date=r.date,
                status=r.status,
                invoice_number=r.invoice_number,
                currency=r.currency,
                buyer=r.buyer if r.buyer is not None else _buyer(customers.get(r.customer_id)),
                breakdown=r.breakdown or [],
                net=r.net,
                tax=r.tax,
                legacy_rate=r.legacy_rate,
            )
            for r in found
        ]

    async def tenants(self, limit: int = 2) -> list[str]:
        """Up to ``limit`` tenant ids (the CLI acts for the only tenant there is)."""
        return list(await self.session.scalars(select(Tenant.id).order_by(Tenant.id).limit(limit)))

    async def tenant_exists(self, tenant_id: str) -> bool:
        q = select(Tenant.id).where(Tenant.id == tenant_id)
        return await self.session.scalar(q) is not None


def _buyer(customer: Customer | None) -> dict[str, Any]:
    """An invoice finalized before buyers were kept: the customer as it is now."""
    if customer is None:
        return {}
    return {
        "name": customer.name,
        "tax_ids": customer.tax_ids or [],
        "billing_address": customer.billing_address,
        "tax_status": customer.tax_status,
    }
