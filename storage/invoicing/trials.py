"""The SQL of trials: claiming the live trials whose ``subscription.trial_will_end`` is due
(the tenant's ``trial_will_end_days`` before their end) and marking them told (see
workers/invoicing/trials.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.invoicing.models import InvoicingConfigRow, Subscription
from storage.quarantine import not_quarantined

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
        setting = (
            select(InvoicingConfigRow.trial_will_end_days)
            .where(InvoicingConfigRow.tenant_id == Subscription.tenant_id)
            .scalar_subquery()
        )
        days = func.coalesce(setting, DEFAULT_WILL_END_DAYS)
        q = select(Subscription).where(
            Subscription.status == "active",
            Subscription.trial_end.is_not(None),
            Subscription.trial_will_end_sent_at.is_(None),
            Subscription.trial_end > as_of,
            Subscription.trial_end - func.make_interval(0, 0, 0, days) <= as_of,
            not_quarantined(job, "subscription", Subscription.tenant_id, Subscription.id),
        )
        if tenant_id is not None:
            q = q.where(Subscription.tenant_id == tenant_id)
        if only is not None:
            q = q.where(tuple_(Subscription.tenant_id, Subscription.id).in_(only))
        q = q.order_by(Subscription.trial_end).limit(limit)
        return list(await self.session.scalars(q.with_for_update(skip_locked=True)))

    async def told(self, subs: Sequence[Subscription], at: datetime) -> None:
        """``subs`` were sent ``subscription.trial_will_end``."""
        if subs:
            await self.session.execute(
                update(Subscription)
                .where(tuple_(Subscription.tenant_id, Subscription.id).in_(
                    [(s.tenant_id, s.id) for s in subs]
                ))
                .values(trial_will_end_sent_at=at)
            )  # fmt: skip

    async def move(self, sub: Subscription, values: dict[str, Any]) -> None:
        """Set ``sub``'s period state (a plan change at once) to ``values``."""
        for column, value in values.items():
            setattr(sub, column, value)
