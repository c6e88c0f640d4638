"""Late usage of an ended subscription: its final period has no next invoice to carry
adjustment lines, so once the tenant's ``late_usage_grace_hours`` have passed since it
ended, a billing run drafts one invoice of kind ``adjustment`` for it (no plan lines, no
``invoice.created``). The draft then goes the way of every draft: the usage topic's offsets
are snapshotted, it finalizes when metering has caught up, and its lines are the
late-usage adjustments of the subscription's periods within the look-back. A draft that
finds no late usage is dropped without a number (``Billing.finalize``).

Each ended subscription is drafted once: the claim marks it (``late_usage_checked_at``)
in the transaction that inserts the draft, and the draft is unique per subscription and
period start (its end).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from schemas.envelope import new_id
from storage.invoicing import InvoicingRepository, Subscription
from storage.invoicing.late_usage import LateUsageRepository
from workers.invoicing import views
from workers.runtime import Tx

LATE_USAGE = "invoicing.late_usage"
ADJUSTMENT = "adjustment"  # the kind of an ended subscription's late-usage invoice


async def draft(tx: Tx, subs: Sequence[Subscription], as_of: datetime, lookback: timedelta) -> int:
    """Adjustment drafts for ``subs`` (ended, claimed, locked) that ended within the
    look-back; older ones are only marked (nothing of them can be billed any more)."""
    repo = tx.repo(InvoicingRepository)
    recent = [s for s in subs if s.ended_at is not None and s.ended_at > as_of - lookback]
    plans = await repo.plans({s.plan_id for s in recent})
    configs = await repo.configs({s.tenant_id for s in recent})
    rows: list[dict[str, Any]] = []
    for s in recent:
        assert s.ended_at is not None
        rows.append(
            {
                "id": new_id(),
                "tenant_id": s.tenant_id,
                "customer_id": s.customer_id,
                "subscription_id": s.id,
                "plan_id": s.plan_id,
                "kind": ADJUSTMENT,
                "status": "draft",
                "number": None,
                "currency": plans[s.plan_id].currency,
                "period_start": s.ended_at,
                "period_end": s.ended_at,
                "proration": Decimal(1),
                "subtotal": 0,
                "tax": 0,
                "total": 0,
                "amount_paid": 0,
                "tax_rate": None,
                "rounding": views.config_of(configs.get(s.tenant_id)).rounding,
                "finalize_after": as_of,
                "usage_offsets": None,
            }
        )
    await repo.insert_invoices(rows, [])
    await tx.repo(LateUsageRepository).checked(subs, as_of)
    return len(subs)
