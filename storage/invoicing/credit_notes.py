"""Credit notes' repository: all their SQL (models in ``credit_note_models.py``). Every
method takes the tenant. A note's number comes from a counter row locked until the issuing
transaction ends: gapless per tenant and year, in issue order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.invoicing.credit_note_models import CreditNote, CreditNoteLineRow, CreditNoteSequence
from storage.invoicing.models import Customer, Invoice

__all__ = ["CreditNote", "CreditNoteLineRow", "CreditNoteRepository", "CreditNoteSequence"]

MAX_LIST = 1000


class CreditNoteRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def next_number(self, tenant_id: str, year: int) -> int:
        """Reserve the next number of ``year``; the counter row stays locked until the
        transaction ends (a failed command rolls it back: no gap)."""
        stmt = insert(CreditNoteSequence).values(tenant_id=tenant_id, year=year, last=1)
        last = await self.session.scalar(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id", "year"], set_={"last": CreditNoteSequence.last + 1}
            ).returning(CreditNoteSequence.last)
        )
        assert last is not None
        return int(last)

    async def note(self, tenant_id: str, id: str, *, lock: bool = False) -> CreditNote | None:
        return await self.session.get(CreditNote, (tenant_id, id), with_for_update=lock or None)

    async def add(self, note: dict[str, Any], lines: Sequence[dict[str, Any]]) -> None:
        self.session.add(CreditNote(**note))
        await self.session.flush()
        if lines:
            await self.session.execute(insert(CreditNoteLineRow), list(lines))

    async def of_invoice(self, tenant_id: str, invoice_id: str) -> list[CreditNote]:
        q = (
            select(CreditNote)
            .where(CreditNote.tenant_id == tenant_id, CreditNote.invoice_id == invoice_id)
            .order_by(CreditNote.issued_at, CreditNote.number)
        )
        return list(await self.session.scalars(q))

    async def lines(
        self, tenant_id: str, note_ids: Sequence[str]
    ) -> dict[str, list[CreditNoteLineRow]]:
        out: dict[str, list[CreditNoteLineRow]] = {i: [] for i in note_ids}
        if not note_ids:
            return out
        q = (
            select(CreditNoteLineRow)
            .where(
                CreditNoteLineRow.tenant_id == tenant_id,
                CreditNoteLineRow.credit_note_id.in_(list(note_ids)),
            )
            .order_by(CreditNoteLineRow.credit_note_id, CreditNoteLineRow.position)
        )
        for row in await self.session.scalars(q):
            out[row.credit_note_id].append(row)
        return out

    async def search(
        self,
        tenant_id: str,
        *,
        invoice_id: str | None,
        customer_external_id: str | None,
        limit: int,
    ) -> list[tuple[CreditNote, str]]:
        """Notes (newest number first) with their customer's external id."""
        q = (
            select(CreditNote, Customer.external_id)
            .join(Customer, Customer.id == CreditNote.customer_id)
            .where(CreditNote.tenant_id == tenant_id)
        )
        if invoice_id is not None:
            q = q.where(CreditNote.invoice_id == invoice_id)
        if customer_external_id is not None:
            q = q.where(
                Customer.tenant_id == tenant_id, Customer.external_id == customer_external_id
            )
        q = q.order_by(CreditNote.created_at.desc(), CreditNote.number.desc())
        rows = await self.session.execute(q.limit(min(limit, MAX_LIST)))
        return [(n, str(ext)) for n, ext in rows]

    @staticmethod
    def void(note: CreditNote, at: Any, reason: str | None) -> None:
        note.status, note.voided_at, note.void_reason = "void", at, reason

    @staticmethod
    def credit_invoice(invoice: Invoice, amount: int, paid_at: Any | None) -> None:
        """Add ``amount`` (negative: a voided note gives it back) to what credit notes took
        off ``invoice``'s amount due; ``paid_at``: nothing is due any more, it is paid."""
        invoice.amount_credited += amount
        if paid_at is not None:
            invoice.status, invoice.paid_at = "paid", paid_at
