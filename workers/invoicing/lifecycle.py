"""A subscription's life, pure: its periods as billing runs move it from one to the next,
trials (their own period, flat fees never billed, usage billed only when the subscription
says so), conversion or cancellation at a trial's end, and plan changes at once (the current
period cut in two, each part prorated to the second). ADR 0049; no I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import Literal

from workers.invoicing.service import add_interval, ceil_hour, period, proration

EXACT = 80  # digits: enough that p - p*x is exact for the proration p and share x (28 each)


@dataclass
class SubscriptionState:
    """A subscription as a billing run moves it from period to period."""

    tenant_id: str
    id: str
    customer_id: str
    plan_id: str
    next_plan_id: str | None
    status: str
    start: datetime
    anchor: datetime
    period_index: int
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    ended_at: datetime | None
    trial_end: datetime | None = None
    trial_end_behavior: str = "convert"
    bill_trial_usage: bool = False
    period_proration: Decimal = Decimal(1)  # the share of the flat fees this period bills

    def in_trial(self) -> bool:
        """The current period is (a part of) the trial."""
        return self.trial_end is not None and self.current_period_end <= self.trial_end

    def flat_share(self) -> Decimal:
        """What the current period bills of the flat fees: nothing in a trial."""
        return Decimal(0) if self.in_trial() else self.period_proration

    def usage_billed(self) -> bool:
        return not self.in_trial() or self.bill_trial_usage


def trial_end(
    start: datetime, given_end: datetime | None, given_days: int | None, plan_days: int | None
) -> datetime | None:
    """When a subscription starting at ``start`` ends its trial: the one it gives (an end,
    or days: 0 is none), else the plan's; None without a trial."""
    if given_end is not None:
        return given_end
    days = plan_days if given_days is None else given_days
    return start + timedelta(days=days) if days else None


def first_period(
    start: datetime, interval: str, trial: datetime | None
) -> tuple[datetime, datetime]:
    """A new subscription's first period: the trial, else its first billing period."""
    return (start, trial) if trial is not None else period(start, interval, 0)


def split(share: Decimal, start: datetime, end: datetime, at: datetime) -> tuple[Decimal, Decimal]:
    """Cut a period [start, end) that bills ``share`` of the flat fees at ``at``: what the
    part before ``at`` bills (to the second) and what the rest bills. The two sum to
    ``share`` exactly (the rest is computed exactly)."""
    before = share * proration(start, end, at)
    with localcontext() as ctx:
        ctx.prec = EXACT
        return before, share - before


def advance(
    sub: SubscriptionState, interval: Callable[[str], str]
) -> Literal["ended", "updated"] | None:
    """Move ``sub`` past its current period: end it (``"ended"``: cancelled at the period's
    end, or a trial that ends with ``cancel``), start over from a new anchor (``"updated"``:
    a plan change at the boundary, or a trial converting: paid periods start at its end),
    or renew (None). ``interval``: a plan id's interval."""
    trial_over = sub.trial_end is not None and sub.current_period_end == sub.trial_end
    if sub.cancel_at_period_end or (trial_over and sub.trial_end_behavior == "cancel"):
        sub.status, sub.ended_at = "ended", sub.current_period_end
        return "ended"
    sub.period_proration = Decimal(1)
    if sub.next_plan_id or trial_over:
        sub.plan_id, sub.next_plan_id = sub.next_plan_id or sub.plan_id, None
        sub.anchor, sub.period_index = sub.current_period_end, 0
    else:
        sub.period_index += 1
    sub.current_period_start, sub.current_period_end = period(
        sub.anchor, interval(sub.plan_id), sub.period_index
    )
    return "updated" if sub.period_index == 0 else None


def change_now(
    sub: SubscriptionState, plan_id: str, at: datetime, old_interval: str, new_interval: str
) -> tuple[datetime, Decimal, bool]:
    """Switch ``sub`` to ``plan_id`` at ``at`` (in its current period). Returns the old
    plan's part to invoice now: [its start, ``at``) with the share of the flat fees it bills
    (0 in a trial) and whether its usage is billed. The new plan's first period starts at
    ``at``: it ends where the old one would have (the same interval: the billing cycle is
    kept, its flat fees prorated for the rest; or a trial: it goes on, on the new plan), or,
    for another interval, one interval after the first whole hour from ``at`` (a new cycle
    anchored there, billed in full)."""
    start, in_trial, usage = sub.current_period_start, sub.in_trial(), sub.usage_billed()
    before, rest = split(sub.period_proration, start, sub.current_period_end, at)
    sub.plan_id, sub.next_plan_id, sub.current_period_start = plan_id, None, at
    if in_trial or old_interval == new_interval:
        sub.period_proration = rest
    else:
        sub.anchor, sub.period_index = ceil_hour(at), 0
        sub.current_period_end = add_interval(sub.anchor, new_interval, 1)
        sub.period_proration = Decimal(1)
    return start, (Decimal(0) if in_trial else before), usage
