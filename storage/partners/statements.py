"""Commission statements and their payouts (a part of ``PartnerRepository``): a
statement's rows, gapless numbers per tenant and year, carried totals."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.partners.models import (
    PayoutRow,
    StatementNumberRow,
    StatementRow,
)


class Statements:
    session: AsyncSession  # PartnerRepository's

    # --- statements and payouts -----------------------------------------------------------

    async def statement(
        self, tenant_id: str, statement_id: str, *, lock: bool = False
    ) -> StatementRow | None:
        q = select(StatementRow).where(
            StatementRow.tenant_id == tenant_id, StatementRow.statement_id == statement_id
        )
        if lock:
            q = q.with_for_update().execution_options(populate_existing=True)
        return (await self.session.scalars(q)).first()

    async def statements(
        self,
        tenant_id: str,
        partner_id: str,
        *,
        period: str | None = None,
        limit: int = 100,
    ) -> list[StatementRow]:
        """The partner's statements, newest first (or those of one period)."""
        q = select(StatementRow).where(
            StatementRow.tenant_id == tenant_id, StatementRow.partner_id == partner_id
        )
        if period is not None:
            q = q.where(StatementRow.period == period)
        q = q.order_by(StatementRow.issued_at.desc(), StatementRow.number.desc()).limit(limit)
        return list(await self.session.scalars(q))

    async def carried_into(self, tenant_id: str, statement_id: str) -> list[StatementRow]:
        """The carried statements whose negative totals this statement took over."""
        q = (
            select(StatementRow)
            .where(StatementRow.tenant_id == tenant_id, StatementRow.carried_to == statement_id)
            .order_by(StatementRow.issued_at, StatementRow.number)
        )
        return list(await self.session.scalars(q))

    async def open_carries(
        self, tenant_id: str, partner_id: str, currency: str
    ) -> list[StatementRow]:
        """The partner's carried statements in ``currency`` not taken over yet, locked."""
        q = (
            select(StatementRow)
            .where(
                StatementRow.tenant_id == tenant_id,
                StatementRow.partner_id == partner_id,
                StatementRow.currency == currency,
                StatementRow.status == "carried",
                StatementRow.carried_to.is_(None),
            )
            .order_by(StatementRow.issued_at, StatementRow.number)
            .with_for_update()
        )
        return list(await self.session.scalars(q))

    async def next_number(self, tenant_id: str, year: int) -> int:
        """The tenant's next statement number of ``year`` (gapless: under the counter's lock,
        released when this transaction ends — a rolled-back issue gives its number back)."""
        stmt = (
            insert(StatementNumberRow)
            .values(tenant_id=tenant_id, year=year, last=1)
            .on_conflict_do_update(
                index_elements=["tenant_id", "year"],
                set_={"last": StatementNumberRow.last + 1},
            )
            .returning(StatementNumberRow.last)
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def add_statement(self, row: StatementRow) -> None:
        self.session.add(row)
        await self.session.flush()

    async def carry(self, tenant_id: str, statement_ids: Sequence[str], into: str) -> None:
        if statement_ids:
            await self.session.execute(
                update(StatementRow)
                .where(
                    StatementRow.tenant_id == tenant_id,
                    StatementRow.statement_id.in_(list(statement_ids)),
                )
                .values(carried_to=into)
            )

    async def payout(self, tenant_id: str, payout_id: str) -> PayoutRow | None:
        return await self.session.get(PayoutRow, (tenant_id, payout_id))

    async def add_payout(self, row: PayoutRow) -> None:
        self.session.add(row)
        await self.session.flush()

    async def payouts(self, tenant_id: str, statement_id: str) -> list[PayoutRow]:
        q = (
            select(PayoutRow)
            .where(PayoutRow.tenant_id == tenant_id, PayoutRow.statement_id == statement_id)
            .order_by(PayoutRow.paid_at, PayoutRow.payout_id)
        )
        return list(await self.session.scalars(q))
