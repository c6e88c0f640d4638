"""The SQL of trials: claiming the live trials whose ``subscription.trial_will_end`` is due
(the tenant's ``trial_will_end_days`` before their end) and marking them told (see
workers/invoicing/trials.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from storage.invoicing.claims import claim_subscriptions, mark_subscriptions, tenant_setting
from storage.invoicing.models import InvoicingConfigRow, Subscription

DEFAULT_WILL_END_DAYS = 3  # InvoicingConfig.trial_will_end_days, until a tenant sets it


class TrialRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim_ending(
        self,
        as_of: datetime,
        tenant_id: str | None,
        limit: int,
        *,
        job: str,
        only: Sequence[tuple[str, str]] | None = None,
    ) -> list[Subscription]:
        """Live subscriptions in their trial (it ends after ``as_of``) not told yet whose
        tenant's notice time before the trial's end has come by ``as_of``, soonest end
        first, locked (skipping other replicas'); the ones ``job`` quarantined are left out."""
        days = tenant_setting(InvoicingConfigRow.trial_will_end_days, DEFAULT_WILL_END_DAYS)
        return await claim_subscriptions(
            self.session,
            Subscription.status == "active",
            Subscription.trial_end.is_not(None),
            Subscription.trial_will_end_sent_at.is_(None),
            Subscription.trial_end > as_of,
            Subscription.trial_end - func.make_interval(0, 0, 0, days) <= as_of,
            job=job,
            tenant_id=tenant_id,
            only=only,
            order_by=Subscription.trial_end,
            limit=limit,
        )

    async def told(self, subs: Sequence[Subscription], at: datetime) -> None:
        """``subs`` were sent ``subscription.trial_will_end``."""
        await mark_subscriptions(self.session, subs, trial_will_end_sent_at=at)

    async def move(self, sub: Subscription, values: dict[str, Any]) -> None:
        """Set ``sub``'s period state (a plan change at once) to ``values``."""
        for column, value in values.items():
            setattr(sub, column, value)
