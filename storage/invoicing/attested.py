"""The invoicing documents receipts attest, as ``billstream receipts audit`` reads them: a
tenant's finalized invoices (those with a number) and its credit notes, by id or a page at
a time in number order (each page one statement on the ``(tenant_id, number)`` index)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.invoicing.credit_note_models import CreditNote
from storage.invoicing.models import Customer, Invoice


class AttestedDocuments:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def invoices(self, tenant_id: str, ids: Sequence[str]) -> list[tuple[Invoice, str]]:
        """These finalized invoices of the tenant (numbered), each with its customer's
        external id; ids the tenant has no finalized invoice of are left out."""
        if not ids:
            return []
        rows = await self.session.execute(
            select(Invoice, Customer.external_id)
            .join(Customer, Customer.id == Invoice.customer_id)
            .where(
                Invoice.tenant_id == tenant_id,
                Invoice.id.in_(list(ids)),
                Invoice.number.is_not(None),
            )
        )
        return [(i, str(ext)) for i, ext in rows]

    async def notes(
        self, tenant_id: str, ids: Sequence[str]
    ) -> list[tuple[CreditNote, Invoice, str]]:
        """These credit notes of the tenant, each with its invoice and its customer's
        external id."""
        if not ids:
            return []
        rows = await self.session.execute(
            select(CreditNote, Invoice, Customer.external_id)
            .join(Invoice, Invoice.id == CreditNote.invoice_id)
            .join(Customer, Customer.id == CreditNote.customer_id)
            .where(CreditNote.tenant_id == tenant_id, CreditNote.id.in_(list(ids)))
        )
        return [(n, i, str(ext)) for n, i, ext in rows]

    async def invoice_page(
        self, tenant_id: str, after: str | None, limit: int
    ) -> list[tuple[str, str]]:
        """``(number, id)`` of the tenant's next ``limit`` finalized invoices by number."""
        q = select(Invoice.number, Invoice.id).where(
            Invoice.tenant_id == tenant_id, Invoice.number.is_not(None)
        )
        if after is not None:
            q = q.where(Invoice.number > after)
        rows = await self.session.execute(q.order_by(Invoice.number).limit(limit))
        return [(str(n), str(i)) for n, i in rows]

    async def note_page(
        self, tenant_id: str, after: str | None, limit: int
    ) -> list[tuple[str, str]]:
        """``(number, id)`` of the tenant's next ``limit`` credit notes by number."""
        q = select(CreditNote.number, CreditNote.id).where(CreditNote.tenant_id == tenant_id)
        if after is not None:
            q = q.where(CreditNote.number > after)
        rows = await self.session.execute(q.order_by(CreditNote.number).limit(limit))
        return [(str(n), str(i)) for n, i in rows]
