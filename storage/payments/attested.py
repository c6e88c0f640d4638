"""The payments documents receipts attest, as ``billstream receipts audit`` reads them: a
tenant's succeeded payments and refunds (each refund with the payment it refunds), by id
or a page at a time in id order (each page one statement on the primary key)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.payments.models import Payment, Refund

SUCCEEDED = "succeeded"


class AttestedPayments:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def payments(self, tenant_id: str, ids: Sequence[str]) -> list[Payment]:
        """These payments of the tenant, whatever their state."""
        if not ids:
            return []
        q = select(Payment).where(Payment.tenant_id == tenant_id, Payment.id.in_(list(ids)))
        return list(await self.session.scalars(q))

    async def refunds(self, tenant_id: str, ids: Sequence[str]) -> list[tuple[Refund, Payment]]:
        """These refunds of the tenant, whatever their state, each with its payment."""
        if not ids:
            return []
        rows = await self.session.execute(
            select(Refund, Payment)
            .join(
                Payment,
                (Payment.tenant_id == Refund.tenant_id) & (Payment.id == Refund.payment_id),
            )
            .where(Refund.tenant_id == tenant_id, Refund.id.in_(list(ids)))
        )
        return [(r, p) for r, p in rows]

    async def payment_page(self, tenant_id: str, after: str | None, limit: int) -> list[str]:
        """The ids of the tenant's next ``limit`` succeeded payments, by id."""
        q = select(Payment.id).where(Payment.tenant_id == tenant_id, Payment.state == SUCCEEDED)
        if after is not None:
            q = q.where(Payment.id > after)
        return list(await self.session.scalars(q.order_by(Payment.id).limit(limit)))

    async def refund_page(self, tenant_id: str, after: str | None, limit: int) -> list[str]:
        """The ids of the tenant's next ``limit`` succeeded refunds, by id."""
        q = select(Refund.id).where(Refund.tenant_id == tenant_id, Refund.state == SUCCEEDED)
        if after is not None:
            q = q.where(Refund.id > after)
        return list(await self.session.scalars(q.order_by(Refund.id).limit(limit)))
