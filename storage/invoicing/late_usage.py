"""The SQL of late usage of ended subscriptions: claiming the ended subscriptions whose
late-usage invoice is due, and marking them done (see workers/invoicing/late_usage.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.invoicing.models import InvoicingConfigRow, Subscription
from storage.quarantine import not_quarantined

DEFAULT_GRACE_HOURS = 72  # InvoicingConfig.late_usage_grace_hours, until a tenant sets it


class LateUsageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim_ended(
        self,
        as_of: datetime,
        tenant_id: str | None,
        limit: int,
        *,
        job: str,
        only: Sequence[tuple[str, str]] | None = None,
    ) -> list[Subscription]:
        """Ended subscriptions not checked for late usage yet whose tenant's grace period
        after the end has passed by ``as_of``, oldest end first, locked (skipping other
        replicas'); the ones ``job`` quarantined are left out."""
        grace = (
            select(InvoicingConfigRow.late_usage_grace_hours)
            .where(InvoicingConfigRow.tenant_id == Subscription.tenant_id)
            .scalar_subquery()
        )
        hours = func.coalesce(grace, DEFAULT_GRACE_HOURS)
        q = select(Subscription).where(
            Subscription.status == "ended",
            Subscription.late_usage_checked_at.is_(None),
            Subscription.ended_at <= as_of,
            Subscription.ended_at + func.make_interval(0, 0, 0, 0, hours) <= as_of,
            not_quarantined(job, "subscription", Subscription.tenant_id, Subscription.id),
        )
        if tenant_id is not None:
            q = q.where(Subscription.tenant_id == tenant_id)
        if only is not None:
            q = q.where(tuple_(Subscription.tenant_id, Subscription.id).in_(only))
        q = q.order_by(Subscription.ended_at).limit(limit)
        return list(await self.session.scalars(q.with_for_update(skip_locked=True)))

    async def checked(self, subs: Sequence[Subscription], at: datetime) -> None:
        """``subs``' late usage is taken care of (drafted, or too old to bill)."""
        if subs:
            await self.session.execute(
                update(Subscription)
                .where(tuple_(Subscription.tenant_id, Subscription.id).in_(
                    [(s.tenant_id, s.id) for s in subs]
                ))
                .values(late_usage_checked_at=at)
            )  # fmt: skip
