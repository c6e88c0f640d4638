"""A subscription's periods and prorations (workers/invoicing/lifecycle.py, ADR 0049):
trials, conversion or cancellation at their end, and plan changes at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from workers.invoicing import lifecycle

NOV = datetime(2031, 11, 1, tzinfo=UTC)
DEC = datetime(2031, 12, 1, tzinfo=UTC)
INTERVALS = {"basic": "month", "pro": "month", "annual": "year"}


def state(**changes: object) -> lifecycle.SubscriptionState:
    sub = lifecycle.SubscriptionState(
        tenant_id="t", id="s", customer_id="c", plan_id="basic", next_plan_id=None,
        status="active", start=NOV, anchor=NOV, period_index=0, current_period_start=NOV,
        current_period_end=DEC, cancel_at_period_end=False, ended_at=None,
    )  # fmt: skip
    for k, v in changes.items():
        setattr(sub, k, v)
    return sub


def test_a_trial_is_its_own_period_then_converts_anchored_at_its_end() -> None:
    end = lifecycle.trial_end(NOV, None, None, 14)
    assert end == NOV + timedelta(days=14)
    assert lifecycle.trial_end(NOV, None, 0, 14) is None  # trial_days 0: none
    assert lifecycle.first_period(NOV, "month", end) == (NOV, end)
    sub = state(trial_end=end, current_period_end=end)
    assert (sub.in_trial(), sub.flat_share(), sub.usage_billed()) == (True, 0, False)
    assert lifecycle.advance(sub, INTERVALS.__getitem__) == "updated"
    assert (sub.anchor, sub.period_index) == (end, 0)
    assert (sub.current_period_start, sub.current_period_end) == (end, end.replace(month=12))
    assert (sub.in_trial(), sub.flat_share(), sub.usage_billed()) == (False, 1, True)


def test_a_trial_that_cancels_ends_at_its_end() -> None:
    end = NOV + timedelta(days=7)
    sub = state(trial_end=end, current_period_end=end, trial_end_behavior="cancel")
    assert lifecycle.advance(sub, INTERVALS.__getitem__) == "ended"
    assert (sub.status, sub.ended_at) == ("ended", end)


def test_an_immediate_change_cuts_the_period_and_keeps_the_cycle() -> None:
    sub = state()
    at = NOV + timedelta(days=10, hours=12)  # 10.5 of 30 days
    start, share, usage = lifecycle.change_now(sub, "pro", at, "month", "month")
    assert (start, share, usage) == (NOV, Decimal("0.35"), True)
    assert (sub.plan_id, sub.current_period_start, sub.current_period_end) == ("pro", at, DEC)
    assert sub.period_proration == Decimal("0.65")
    assert lifecycle.advance(sub, INTERVALS.__getitem__) is None  # renews on the old cycle
    assert (sub.current_period_start, sub.period_proration) == (DEC, 1)


def test_another_interval_starts_a_new_cycle_at_the_next_whole_hour() -> None:
    sub = state()
    at = NOV + timedelta(days=3, minutes=20)
    _, share, _ = lifecycle.change_now(sub, "annual", at, "month", "year")
    anchor = NOV + timedelta(days=3, hours=1)
    assert (sub.anchor, sub.current_period_start) == (anchor, at)
    assert sub.current_period_end == anchor.replace(year=2032)
    assert sub.period_proration == 1  # billed in full
    assert share == Decimal(3 * 86400 + 1200) / Decimal(30 * 86400)


def test_a_change_in_a_trial_keeps_the_trial_on_the_new_plan() -> None:
    end = NOV + timedelta(days=14)
    sub = state(trial_end=end, current_period_end=end)
    _, share, usage = lifecycle.change_now(sub, "annual", NOV + timedelta(days=5), "month", "year")
    assert (share, usage, sub.current_period_end, sub.in_trial()) == (0, False, end, True)


@given(
    seconds=st.integers(min_value=0, max_value=30 * 86400 - 1),
    again=st.integers(min_value=0, max_value=30 * 86400 - 1),
)
def test_the_two_parts_of_a_cut_period_sum_to_its_share(seconds: int, again: int) -> None:
    sub = state()
    at = NOV + timedelta(seconds=seconds)
    _, first, _ = lifecycle.change_now(sub, "pro", at, "month", "month")
    assert first + sub.period_proration == 1  # exactly
    # a second change in the same period: the three parts still sum to 1
    at2 = max(at, NOV + timedelta(seconds=again))
    _, second, _ = lifecycle.change_now(sub, "basic", at2, "month", "month")
    assert first + second + sub.period_proration == 1
    assert second >= 0 and sub.period_proration >= 0
