"""Invoicing's views: what other packages may read of invoicing (re-exported by its face,
``workers/invoicing/__init__.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from schemas.pricing import PlanSpec
from workers.invoicing import service
from workers.invoicing.billing import DEFAULT_CONFIG, InvoiceMaker, Plans
from workers.invoicing.service import usage_window
from workers.runtime import Tx

__all__ = ["DraftPeriod", "draft_totals", "usage_window"]

_PLANS = Plans()


@dataclass(frozen=True)
class DraftPeriod:
    """A subject's current period under its subscription: what its invoice is computed from."""

    tenant_id: str
    subject: str
    plan: PlanSpec
    currency: str
    start: datetime
    end: datetime
    tax_rate: Decimal | None
    rounding: str | None  # the tenant's invoicing rounding; None: invoicing's default


async def draft_totals(tx: Tx, periods: Sequence[DraftPeriod]) -> list[int]:
    """The total, in minor units, of the invoice each period would get if it closed now,
    computed exactly as invoicing computes a draft (usage read in one go)."""
    contexts = [
        (
            p.tenant_id,
            service.InvoiceContext(
                plan=p.plan,
                subject=p.subject,
                currency=p.currency,
                period_start=p.start,
                period_end=p.end,
                proration=Decimal(1),
                rounding=p.rounding or str(DEFAULT_CONFIG["rounding"]),
            ),
        )
        for p in periods
    ]
    all_lines = await InvoiceMaker(tx.session, _PLANS).lines(contexts)
    return [
        service.totals(lines, p.tax_rate, p.currency, ctx.rounding).total
        for p, (_, ctx), lines in zip(periods, contexts, all_lines, strict=True)
    ]
