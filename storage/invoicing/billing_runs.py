"""Billing runs' SQL (a part of ``InvoicingRepository``, which inherits it): requested runs
recorded, held, completed or failed, and the drafts still waiting for metering."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.invoicing.models import BillingRun, Invoice
from storage.quarantine import not_quarantined

BILLED_BY_RUNS = Invoice.kind != "one_off"  # a one-off draft is finalized by its command


class BillingRunQueries:
    session: AsyncSession

    async def add_run(self, tenant_id: str, id: str, as_of: datetime) -> bool:
        """A pending billing run; False when one with this id exists."""
        inserted = await self.session.scalar(
            insert(BillingRun)
            .values(tenant_id=tenant_id, id=id, as_of=as_of, status="pending")
            .on_conflict_do_nothing(index_elements=["tenant_id", "id"])
            .returning(BillingRun.id)
        )
        return inserted is not None

    async def run(self, tenant_id: str, id: str) -> BillingRun | None:
        return await self.session.scalar(
            select(BillingRun).where(BillingRun.tenant_id == tenant_id, BillingRun.id == id)
        )

    async def pending_runs(self, *, job: str, limit: int) -> list[BillingRun]:
        """The oldest pending runs, not locked; runs ``job`` quarantined are left out."""
        q = select(BillingRun).where(
            BillingRun.status == "pending",
            not_quarantined(job, "billing_run", BillingRun.tenant_id, BillingRun.id),
        )
        return list(await self.session.scalars(q.order_by(BillingRun.requested_at).limit(limit)))

    async def run_status(self, tenant_id: str, id: str) -> str | None:
        return await self.session.scalar(
            select(BillingRun.status).where(BillingRun.tenant_id == tenant_id, BillingRun.id == id)
        )

    async def count_on_run(self, tenant_id: str, id: str, *, created: int, finalized: int) -> None:
        """Add what a chunk of the pending run ``id`` created and finalized to the run's
        counts, in the chunk's own transaction (whichever replica worked it; nothing once the
        run is not pending any more)."""
        if created or finalized:
            await self.session.execute(
                update(BillingRun)
                .where(
                    BillingRun.tenant_id == tenant_id,
                    BillingRun.id == id,
                    BillingRun.status == "pending",
                )
                .values(
                    invoices_created=BillingRun.invoices_created + created,
                    invoices_finalized=BillingRun.invoices_finalized + finalized,
                )
            )

    async def complete_pending_run(
        self, tenant_id: str, id: str, *, waiting: int, at: datetime
    ) -> bool:
        """The pending run ``id`` is done (its chunks counted what they created and
        finalized, ``count_on_run``): the drafts still waiting for metering; False if it was
        not pending any more."""
        result = await self.session.execute(
            update(BillingRun)
            .where(
                BillingRun.tenant_id == tenant_id,
                BillingRun.id == id,
                BillingRun.status == "pending",
            )
            .values(drafts_waiting=waiting, status="completed", completed_at=at)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def fail_run(self, tenant_id: str, id: str, error: str) -> None:
        await self.session.execute(
            update(BillingRun)
            .where(BillingRun.tenant_id == tenant_id, BillingRun.id == id)
            .values(status="failed", error=error, completed_at=func.now())
        )

    async def drafts_waiting(self, tenant_id: str | None, as_of: datetime) -> int:
        q = select(func.count()).where(
            Invoice.status == "draft", Invoice.finalize_after <= as_of, BILLED_BY_RUNS
        )
        if tenant_id is not None:
            q = q.where(Invoice.tenant_id == tenant_id)
        return int(await self.session.scalar(q) or 0)
