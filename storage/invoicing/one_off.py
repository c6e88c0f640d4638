"""One-off invoices' SQL: inserting a draft once (its id and its tenant's idempotency key are
both unique: a replayed or retried command inserts nothing) and finding the invoice a key or
an id already names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.invoicing.bulk import bulk
from storage.invoicing.models import Invoice, InvoiceLineRow


class OneOffRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(self, invoice: dict[str, Any], lines: Sequence[dict[str, Any]]) -> bool:
        """Insert ``invoice`` and its ``lines``; False (nothing written) when an invoice with
        its id, or its tenant's idempotency key, exists. A concurrent insert of the same key
        waits for the other transaction and then finds it (the unique index)."""
        inserted = await bulk(
            self.session, Invoice.__table__, [invoice], suffix="ON CONFLICT DO NOTHING RETURNING id"
        )
        if not inserted:
            return False
        await bulk(self.session, InvoiceLineRow.__table__, lines)
        return True

    async def existing(self, tenant_id: str, id: str, key: str | None) -> Invoice | None:
        """The invoice of this tenant with this id, or else with this idempotency key,
        locked."""
        match = Invoice.id == id
        if key is not None:
            match = or_(match, Invoice.idempotency_key == key)
        rows = list(
            await self.session.scalars(
                select(Invoice)
                .where(Invoice.tenant_id == tenant_id, match)
                .order_by(Invoice.id != id)
                .with_for_update()
            )
        )
        return rows[0] if rows else None

    async def id_taken(self, id: str) -> bool:
        """An invoice with this id exists (of any tenant: ids are global)."""
        return (await self.session.scalar(select(Invoice.id).where(Invoice.id == id))) is not None
