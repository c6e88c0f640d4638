"""Every read and write of the partners tables (storage/partners/models.py); statements and
payouts in ``statements.py``.

Serialisation: an accrual locks its partner's ``commission_periods`` row (month, currency)
FOR UPDATE before it reads the volume, so two invoices of one partner on two partitions or
replicas never read the same volume; a statement issue locks the partner's row, so two
issues of one partner never interleave. Replays are no-ops by primary keys: an accrual by
(invoice, rule), a cause by (kind, id), a ledger entry by its derived id, a statement by
(partner, period, currency)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.partners.models import (
    AttributionRow,
    CommissionAccrualRow,
    CommissionCauseRow,
    CommissionEntryRow,
    CommissionInvoiceRow,
    CommissionPeriodRow,
    CommissionRuleRow,
    PartnerRow,
    PartnerSubscriptionRow,
)
from storage.partners.statements import Statements


class PartnerRepository(Statements):
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def clock(self) -> datetime:
        now: datetime = (await self.session.execute(select(func.clock_timestamp()))).scalar_one()
        return now

    # --- partners -------------------------------------------------------------------------

    async def partner(
        self, tenant_id: str, partner_id: str, *, lock: bool = False
    ) -> PartnerRow | None:
        q = select(PartnerRow).where(
            PartnerRow.tenant_id == tenant_id, PartnerRow.partner_id == partner_id
        )
        if lock:
            q = q.with_for_update()
        return (await self.session.scalars(q)).first()

    async def partners(
        self, tenant_id: str, *, limit: int = 100, after: str | None = None
    ) -> list[PartnerRow]:
        q = select(PartnerRow).where(PartnerRow.tenant_id == tenant_id)
        if after is not None:
            q = q.where(PartnerRow.partner_id > after)
        return list(await self.session.scalars(q.order_by(PartnerRow.partner_id).limit(limit)))

    async def upsert_partner(
        self, tenant_id: str, partner_id: str, name: str, tier: str, email: str | None
    ) -> tuple[PartnerRow, bool]:
        """The partner as written; True when it was created."""
        now = await self.clock()
        stmt = (
            insert(PartnerRow)
            .values(
                tenant_id=tenant_id,
                partner_id=partner_id,
                name=name,
                tier=tier,
                email=email,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_update(
                index_elements=["tenant_id", "partner_id"],
                set_={"name": name, "tier": tier, "email": email, "updated_at": now},
            )
            .returning(PartnerRow.created_at)
        )
        created_at = (await self.session.execute(stmt)).scalar_one()
        row = await self.partner(tenant_id, partner_id)
        assert row is not None
        await self.session.refresh(row)
        return row, created_at == now

    # --- rules ----------------------------------------------------------------------------

    async def rules(
        self, tenant_id: str, *, partner_tier: str | None = None
    ) -> list[CommissionRuleRow]:
        q = select(CommissionRuleRow).where(CommissionRuleRow.tenant_id == tenant_id)
        if partner_tier is not None:
            q = q.where(CommissionRuleRow.partner_tier == partner_tier)
        return list(await self.session.scalars(q.order_by(CommissionRuleRow.key)))

    async def upsert_rule(
        self, tenant_id: str, key: str, partner_tier: str, spec: dict[str, Any]
    ) -> None:
        now = await self.clock()
        stmt = (
            insert(CommissionRuleRow)
            .values(
                tenant_id=tenant_id, key=key, partner_tier=partner_tier, spec=spec, updated_at=now
            )
            .on_conflict_do_update(
                index_elements=["tenant_id", "key"],
                set_={"partner_tier": partner_tier, "spec": spec, "updated_at": now},
            )
        )
        await self.session.execute(stmt)

    # --- attributions and subscriptions ---------------------------------------------------

    async def attribute(
        self, tenant_id: str, customer: str, partner_id: str, effective_from: datetime
    ) -> None:
        """The same customer and effective_from again replaces the partner."""
        now = await self.clock()
        stmt = (
            insert(AttributionRow)
            .values(
                tenant_id=tenant_id,
                customer=customer,
                effective_from=effective_from,
                partner_id=partner_id,
                recorded_at=now,
            )
            .on_conflict_do_update(
                index_elements=["tenant_id", "customer", "effective_from"],
                set_={"partner_id": partner_id, "recorded_at": now},
            )
        )
        await self.session.execute(stmt)

    async def attributions(
        self, tenant_id: str, partner_id: str, *, limit: int = 1000
    ) -> list[AttributionRow]:
        """The attributions naming the partner (by customer, then effective_from)."""
        q = (
            select(AttributionRow)
            .where(AttributionRow.tenant_id == tenant_id, AttributionRow.partner_id == partner_id)
            .order_by(AttributionRow.customer, AttributionRow.effective_from)
            .limit(limit)
        )
        return list(await self.session.scalars(q))

    async def partner_of(self, tenant_id: str, customer: str, at: datetime) -> str | None:
        """The partner the customer is attributed to for a period starting at ``at``: the
        latest attribution with effective_from <= at."""
        q = (
            select(AttributionRow.partner_id)
            .where(
                AttributionRow.tenant_id == tenant_id,
                AttributionRow.customer == customer,
                AttributionRow.effective_from <= at,
            )
            .order_by(AttributionRow.effective_from.desc())
            .limit(1)
        )
        return (await self.session.scalars(q)).first()

    async def attributed_customers(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (tenant, customer) have ever been attributed to a partner."""
        wanted = sorted(set(pairs))
        if not wanted:
            return set()
        tenants = sorted({t for t, _ in wanted})
        customers = sorted({c for _, c in wanted})
        q = (
            select(AttributionRow.tenant_id, AttributionRow.customer)
            .where(AttributionRow.tenant_id.in_(tenants), AttributionRow.customer.in_(customers))
            .distinct()
        )
        found = {(str(t), str(c)) for t, c in await self.session.execute(q)}
        return found & set(wanted)

    async def set_plans(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """(tenant, subscription_id, plan): the subscriptions' current plans."""
        if not rows:
            return
        last = {(t, s): p for t, s, p in rows}
        values = [
            {"tenant_id": t, "subscription_id": s, "plan": p} for (t, s), p in sorted(last.items())
        ]
        stmt = insert(PartnerSubscriptionRow).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant_id", "subscription_id"], set_={"plan": stmt.excluded.plan}
        )
        await self.session.execute(stmt)

    async def plan_of(self, tenant_id: str, subscription_id: str) -> str | None:
        row = await self.session.get(PartnerSubscriptionRow, (tenant_id, subscription_id))
        return None if row is None else row.plan

    # --- accrual state --------------------------------------------------------------------

    async def paid_invoice(self, tenant_id: str, invoice_id: str) -> CommissionInvoiceRow | None:
        return await self.session.get(CommissionInvoiceRow, (tenant_id, invoice_id))

    async def add_paid_invoice(self, row: CommissionInvoiceRow) -> bool:
        """Records an accrued invoice once (False: it was already)."""
        stmt = (
            insert(CommissionInvoiceRow)
            .values({c.name: getattr(row, c.key) for c in CommissionInvoiceRow.__table__.columns})
            .on_conflict_do_nothing()
            .returning(CommissionInvoiceRow.invoice_id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def lock_period(
        self, tenant_id: str, partner_id: str, period: str, currency: str
    ) -> CommissionPeriodRow:
        """The partner's volume row of the month and currency, created when missing, locked
        FOR UPDATE until this transaction ends."""
        await self.session.execute(
            insert(CommissionPeriodRow)
            .values(
                tenant_id=tenant_id,
                partner_id=partner_id,
                period=period,
                currency=currency,
                volume="0",
                accrued={},
            )
            .on_conflict_do_nothing()
        )
        q = (
            select(CommissionPeriodRow)
            .where(
                CommissionPeriodRow.tenant_id == tenant_id,
                CommissionPeriodRow.partner_id == partner_id,
                CommissionPeriodRow.period == period,
                CommissionPeriodRow.currency == currency,
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return (await self.session.scalars(q)).one()

    async def save_period(
        self, row: CommissionPeriodRow, volume: str, accrued: dict[str, int]
    ) -> None:
        await self.session.execute(
            update(CommissionPeriodRow)
            .where(
                CommissionPeriodRow.tenant_id == row.tenant_id,
                CommissionPeriodRow.partner_id == row.partner_id,
                CommissionPeriodRow.period == row.period,
                CommissionPeriodRow.currency == row.currency,
            )
            .values(volume=volume, accrued=accrued)
        )

    async def accruals(
        self, tenant_id: str, invoice_id: str, *, lock: bool = False
    ) -> list[CommissionAccrualRow]:
        q = (
            select(CommissionAccrualRow)
            .where(
                CommissionAccrualRow.tenant_id == tenant_id,
                CommissionAccrualRow.invoice_id == invoice_id,
            )
            .order_by(CommissionAccrualRow.rule)
        )
        if lock:
            q = q.with_for_update().execution_options(populate_existing=True)
        return list(await self.session.scalars(q))

    async def add_accruals(self, rows: Sequence[CommissionAccrualRow]) -> None:
        self.session.add_all(rows)
        await self.session.flush()

    async def set_reversed(self, tenant_id: str, invoice_id: str, rule: str, total: int) -> None:
        await self.session.execute(
            update(CommissionAccrualRow)
            .where(
                CommissionAccrualRow.tenant_id == tenant_id,
                CommissionAccrualRow.invoice_id == invoice_id,
                CommissionAccrualRow.rule == rule,
            )
            .values(reversed=total)
        )

    async def add_cause(
        self,
        tenant_id: str,
        cause: str,
        cause_id: str,
        invoice_id: str,
        amount: int,
        subtotal: int,
        total: int,
        at: datetime,
    ) -> bool:
        """Keeps a credit note or refund once (False: it was kept before)."""
        stmt = (
            insert(CommissionCauseRow)
            .values(
                tenant_id=tenant_id,
                cause=cause,
                cause_id=cause_id,
                invoice_id=invoice_id,
                amount=amount,
                subtotal=subtotal,
                total=total,
                at=at,
            )
            .on_conflict_do_nothing()
            .returning(CommissionCauseRow.cause_id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def void_cause(
        self, tenant_id: str, cause: str, cause_id: str, at: datetime
    ) -> CommissionCauseRow | None:
        """Marks a kept cause (a credit note) voided: the row if it was live, else None (a
        replay of the void, or a cause never kept)."""
        stmt = (
            update(CommissionCauseRow)
            .where(
                CommissionCauseRow.tenant_id == tenant_id,
                CommissionCauseRow.cause == cause,
                CommissionCauseRow.cause_id == cause_id,
                CommissionCauseRow.voided_at.is_(None),
            )
            .values(voided_at=at)
            .returning(CommissionCauseRow)
        )
        return (await self.session.scalars(stmt)).first()

    async def causes(self, tenant_id: str, invoice_id: str) -> list[CommissionCauseRow]:
        """The invoice's live credit notes and refunds (not voided), in the order they were
        kept."""
        q = (
            select(CommissionCauseRow)
            .where(
                CommissionCauseRow.tenant_id == tenant_id,
                CommissionCauseRow.invoice_id == invoice_id,
                CommissionCauseRow.voided_at.is_(None),
            )
            .order_by(CommissionCauseRow.seq)
        )
        return list(await self.session.scalars(q))

    # --- the ledger -----------------------------------------------------------------------

    async def add_entries(self, rows: Sequence[CommissionEntryRow]) -> list[str]:
        """Inserts ledger entries not there yet; the ids inserted."""
        if not rows:
            return []
        cols = [c for c in CommissionEntryRow.__table__.columns if c.name != "seq"]
        values = [{c.name: getattr(r, c.key) for c in cols} for r in rows]
        stmt = (
            insert(CommissionEntryRow)
            .values(values)
            .on_conflict_do_nothing()
            .returning(CommissionEntryRow.entry_id)
        )
        return [str(i) for i in (await self.session.execute(stmt)).scalars()]

    async def entries(
        self,
        tenant_id: str,
        partner_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
    ) -> list[CommissionEntryRow]:
        """The partner's ledger entries effective in [start, end), by effective_at then seq."""
        q = select(CommissionEntryRow).where(
            CommissionEntryRow.tenant_id == tenant_id, CommissionEntryRow.partner_id == partner_id
        )
        if start is not None:
            q = q.where(CommissionEntryRow.effective_at >= start)
        if end is not None:
            q = q.where(CommissionEntryRow.effective_at < end)
        q = q.order_by(CommissionEntryRow.effective_at, CommissionEntryRow.seq).limit(limit)
        return list(await self.session.scalars(q))

    async def unlisted_entries(
        self, tenant_id: str, partner_id: str, before: datetime
    ) -> list[CommissionEntryRow]:
        """The partner's entries effective before ``before`` and on no statement, locked."""
        q = (
            select(CommissionEntryRow)
            .where(
                CommissionEntryRow.tenant_id == tenant_id,
                CommissionEntryRow.partner_id == partner_id,
                CommissionEntryRow.statement_id.is_(None),
                CommissionEntryRow.effective_at < before,
            )
            .order_by(CommissionEntryRow.effective_at, CommissionEntryRow.seq)
            .with_for_update()
        )
        return list(await self.session.scalars(q))

    async def list_entries(
        self, tenant_id: str, statement_id: str, entry_ids: Sequence[str]
    ) -> None:
        """Puts these entries on the statement."""
        if entry_ids:
            await self.session.execute(
                update(CommissionEntryRow)
                .where(
                    CommissionEntryRow.tenant_id == tenant_id,
                    CommissionEntryRow.entry_id.in_(list(entry_ids)),
                )
                .values(statement_id=statement_id)
            )

    async def statement_entries(
        self, tenant_id: str, statement_id: str
    ) -> list[CommissionEntryRow]:
        q = (
            select(CommissionEntryRow)
            .where(
                CommissionEntryRow.tenant_id == tenant_id,
                CommissionEntryRow.statement_id == statement_id,
            )
            .order_by(CommissionEntryRow.effective_at, CommissionEntryRow.seq)
        )
        return list(await self.session.scalars(q))
