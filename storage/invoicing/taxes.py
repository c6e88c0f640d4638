"""Taxes' repository: all the SQL of tax rates (the model is in ``tax_models.py``,
re-exported here). A version's row is locked while it is changed
(``rate(lock=True)``); finalizing marks the versions it used (``mark_used``), after
which they are immutable."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.invoicing.models import Invoice, InvoiceLineRow
from storage.invoicing.tax_models import TaxRateRow

__all__ = ["TaxRateRepository", "TaxRateRow"]


class TaxRateRepository:
    """Every method takes the tenant: no cross-tenant reads."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def rate(self, tenant_id: str, id: str, *, lock: bool = False) -> TaxRateRow | None:
        q = select(TaxRateRow).where(TaxRateRow.tenant_id == tenant_id, TaxRateRow.id == id)
        return await self.session.scalar(q.with_for_update() if lock else q)

    async def versions(self, tenant_id: str, name: str, *, lock: bool = False) -> list[TaxRateRow]:
        """Every version of the rate ``name``, by effective_from (the first unbounded)."""
        q = (
            select(TaxRateRow)
            .where(TaxRateRow.tenant_id == tenant_id, TaxRateRow.name == name)
            .order_by(TaxRateRow.effective_from.asc().nulls_first(), TaxRateRow.id)
        )
        return list(await self.session.scalars(q.with_for_update() if lock else q))

    async def list_rates(
        self, tenant_id: str, *, name: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[TaxRateRow]:
        """A page of the tenant's versions (of ``name`` only, if given), by id after ``after``."""
        q = select(TaxRateRow).where(TaxRateRow.tenant_id == tenant_id)
        if name is not None:
            q = q.where(TaxRateRow.name == name)
        if after is not None:
            q = q.where(TaxRateRow.id > after)
        return list(await self.session.scalars(q.order_by(TaxRateRow.id).limit(limit)))

    async def count(self, tenant_id: str) -> int:
        """How many versions the tenant has (every rate of every name)."""
        q = select(func.count()).select_from(TaxRateRow).where(TaxRateRow.tenant_id == tenant_id)
        return int(await self.session.scalar(q) or 0)

    async def last_period_taxed(self, tenant_id: str, id: str) -> datetime | None:
        """The latest period start of the finalized invoices' lines taxed with version
        ``id`` (the time finalizing chose it at), or None if no such line. Read through the
        tenant's finalized invoices (``ix_invoices_finalized``) and their lines by invoice:
        what it costs is the tenant's own invoices, never every tenant's lines."""
        q = (
            select(func.max(InvoiceLineRow.period_start))
            .select_from(Invoice)
            .join(InvoiceLineRow, InvoiceLineRow.invoice_id == Invoice.id)
            .where(
                Invoice.tenant_id == tenant_id,
                Invoice.finalized_at.is_not(None),
                InvoiceLineRow.taxes.contains([{"tax_rate_id": id}]),
            )
        )
        return await self.session.scalar(q)

    async def catalog(
        self, tenant_ids: Iterable[str], *, share: bool = False
    ) -> dict[str, list[TaxRateRow]]:
        """Every version of every rate of ``tenant_ids``, by tenant; ``share``: locked
        against change until the transaction ends (finalizing marks what it used)."""
        tenants = set(tenant_ids)
        out: dict[str, list[TaxRateRow]] = {t: [] for t in tenants}
        if not tenants:
            return out
        q = (
            select(TaxRateRow)
            .where(TaxRateRow.tenant_id.in_(tenants))
            .order_by(
                TaxRateRow.tenant_id, TaxRateRow.name, TaxRateRow.effective_from.asc().nulls_first()
            )
        )
        rows = await self.session.scalars(q.with_for_update(read=True) if share else q)
        for r in rows:
            out[r.tenant_id].append(r)
        return out

    async def upsert(self, tenant_id: str, values: dict[str, Any], at: datetime) -> None:
        stmt = insert(TaxRateRow).values(tenant_id=tenant_id, updated_at=at, **values)
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id", "id"], set_=values | {"updated_at": at}
            )
        )

    async def mark_used(self, tenant_id: str, ids: Iterable[str], at: datetime) -> None:
        """The versions ``ids`` were finalized on an invoice: immutable from now on."""
        ids = set(ids)
        if ids:
            await self.session.execute(
                update(TaxRateRow)
                .where(
                    TaxRateRow.tenant_id == tenant_id,
                    TaxRateRow.id.in_(ids),
                    TaxRateRow.used_at.is_(None),
                )
                .values(used_at=at)
            )
