"""The reads the entitlements API needs beside ``EntitlementRepository``'s: whether a customer
or a plan exists (invoicing's tables, read without a lock: a check must never wait on a
writer), and a plan's grants as stored."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.entitlements import PlanGrantRow
from storage.invoicing.models import Customer, Plan


class EntitlementReads:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def customer_exists(self, tenant_id: str, external_id: str) -> bool:
        found = await self.session.scalar(
            select(
                exists().where(Customer.tenant_id == tenant_id, Customer.external_id == external_id)
            )
        )
        return bool(found)

    async def plan_exists(self, tenant_id: str, key: str) -> bool:
        found = await self.session.scalar(
            select(exists().where(Plan.tenant_id == tenant_id, Plan.key == key))
        )
        return bool(found)

    async def plan_grants(self, tenant_id: str, plan: str) -> list[PlanGrantRow]:
        """What the plan gives, by feature key."""
        rows = await self.session.scalars(
            select(PlanGrantRow)
            .where(PlanGrantRow.tenant_id == tenant_id, PlanGrantRow.plan == plan)
            .order_by(PlanGrantRow.feature)
        )
        return list(rows)
