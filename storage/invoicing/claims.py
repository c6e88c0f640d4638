"""How the invoicing jobs claim subscriptions: the rows a step is due for, locked with
``FOR UPDATE SKIP LOCKED`` (replicas share the work), leaving out what the step quarantined,
and how a step marks the rows it did (closing periods, trial notices, late usage)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from storage.invoicing.models import InvoicingConfigRow, Subscription
from storage.quarantine import not_quarantined


def tenant_setting(column: InstrumentedAttribute[Any], default: int) -> ColumnElement[Any]:
    """The subscription's tenant's invoicing setting ``column``, or ``default`` until the
    tenant configures invoicing (a correlated subquery)."""
    setting = (
        select(column)
        .where(InvoicingConfigRow.tenant_id == Subscription.tenant_id)
        .scalar_subquery()
    )
    return func.coalesce(setting, default)


async def claim_subscriptions(
    session: AsyncSession,
    *where: ColumnElement[bool],
    job: str,
    tenant_id: str | None,
    only: Sequence[tuple[str, str]] | None,
    order_by: InstrumentedAttribute[Any],
    limit: int,
) -> list[Subscription]:
    """Up to ``limit`` subscriptions matching ``where`` (of ``tenant_id``, or every tenant;
    ``only``: just these (tenant, id) pairs), in ``order_by`` order, locked; rows another
    transaction holds are skipped, and so are the ones ``job`` quarantined."""
    q = select(Subscription).where(
        *where, not_quarantined(job, "subscription", Subscription.tenant_id, Subscription.id)
    )
    if tenant_id is not None:
        q = q.where(Subscription.tenant_id == tenant_id)
    if only is not None:
        q = q.where(tuple_(Subscription.tenant_id, Subscription.id).in_(only))
    q = q.order_by(order_by).limit(limit)
    return list(await session.scalars(q.with_for_update(skip_locked=True)))


async def mark_subscriptions(
    session: AsyncSession, subs: Sequence[Subscription], **values: Any
) -> None:
    """Set ``values`` on ``subs`` in one statement."""
    if subs:
        keys = [(s.tenant_id, s.id) for s in subs]
        await session.execute(
            update(Subscription)
            .where(tuple_(Subscription.tenant_id, Subscription.id).in_(keys))
            .values(**values)
        )
