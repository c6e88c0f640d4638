"""The SQL of late usage of ended subscriptions: claiming the ended subscriptions whose
late-usage invoice is due, and marking them done (see workers/invoicing/late_usage.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from storage.invoicing.claims import claim_subscriptions, mark_subscriptions, tenant_setting
from storage.invoicing.models import InvoicingConfigRow, Subscription

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
        hours = tenant_setting(InvoicingConfigRow.late_usage_grace_hours, DEFAULT_GRACE_HOURS)
        return await claim_subscriptions(
            self.session,
            Subscription.status == "ended",
            Subscription.late_usage_checked_at.is_(None),
            Subscription.ended_at <= as_of,
            Subscription.ended_at + func.make_interval(0, 0, 0, 0, hours) <= as_of,
            job=job,
            tenant_id=tenant_id,
            only=only,
            order_by=Subscription.ended_at,
            limit=limit,
        )

    async def checked(self, subs: Sequence[Subscription], at: datetime) -> None:
        """``subs``' late usage is taken care of (drafted, or too old to bill)."""
        await mark_subscriptions(self.session, subs, late_usage_checked_at=at)
