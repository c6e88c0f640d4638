"""Invoicing domain logic: billing periods, invoice lines, late-usage adjustments, totals and
invoice state changes (workers/invoicing/service.py)."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.invoicing import CustomerSpec, InvoiceLine
from schemas.pricing import (
    FlatPrice,
    GraduatedPrice,
    MeteredPrice,
    PackagePrice,
    PerUnitPrice,
    PlanSpec,
    Price,
    Tier,
    VolumePrice,
)
from schemas.receipts import receipt_id
from workers.invoicing import service
from workers.invoicing.errors import InvalidTransition

D = Decimal
FAST = settings(max_examples=60, deadline=None)
JAN = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC))
FEB = (datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))
SUBJECT = "customer-1"


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def tiers(*rows: tuple[str | None, str] | tuple[str | None, str, str]) -> list[Tier]:
    out = []
    for row in rows:
        up_to, unit_price, *flat = row
        out.append(
            Tier(
                up_to=None if up_to is None else D(up_to),
                unit_price=D(unit_price),
                flat_fee=D(flat[0]) if flat else D(0),
            )
        )
    return out


def flat(key: str = "platform", amount: str = "49") -> FlatPrice:
    return FlatPrice(key=key, name=f"{key} fee", amount=D(amount))


def per_unit(
    key: str = "tokens",
    unit_price: str = "0.01",
    *,
    meter: str | None = None,
    included: str = "0",
    minimum: str | None = None,
) -> PerUnitPrice:
    return PerUnitPrice(
        key=key,
        name=f"{key} usage",
        meter=meter or key,
        unit_price=D(unit_price),
        included_quantity=D(included),
        minimum_spend=None if minimum is None else D(minimum),
    )


def graduated(
    key: str = "api",
    rows: list[Tier] | None = None,
    *,
    meter: str | None = None,
    included: str = "0",
) -> GraduatedPrice:
    return GraduatedPrice(
        key=key,
        name=f"{key} calls",
        meter=meter or key,
        tiers=rows or tiers(("1000", "0.01", "5"), (None, "0.005")),
        included_quantity=D(included),
    )


def make_plan(*prices: Price, currency: str = "USD", interval: str = "month") -> PlanSpec:
    return PlanSpec(
        key="pro", name="Pro", currency=currency, interval=interval, prices=list(prices)
    )


def context(
    plan: PlanSpec,
    *,
    proration: Decimal = D(1),
    rounding: str = "half_even",
    start: datetime = JAN[0],
    end: datetime = JAN[1],
    currency: str | None = None,
) -> service.InvoiceContext:
    return service.InvoiceContext(
        plan=plan,
        subject=SUBJECT,
        currency=currency or plan.currency,
        period_start=start,
        period_end=end,
        proration=proration,
        rounding=rounding,
    )


def lines_by_key(
    ctx: service.InvoiceContext, usage: dict[str, Decimal | None]
) -> dict[str, service.Line]:
    return {ln.price_key: ln for ln in service.invoice_lines(ctx, usage)}


def fresh_amount(ctx: service.InvoiceContext, price: MeteredPrice, value: Decimal) -> int:
    """What a new invoice for ``ctx`` would charge for ``price`` at ``value``."""
    return lines_by_key(ctx, {price.meter: value})[price.key].amount


def billed(ctx: service.InvoiceContext, price: MeteredPrice, value: Decimal) -> service.Billed:
    """The record of an issued invoice that billed ``price`` at ``value`` for ``ctx``."""
    line = lines_by_key(ctx, {price.meter: value})[price.key]
    return service.Billed(
        ctx, price, line.period_start, line.period_end, quantity=line.quantity, amount=line.amount
    )


# --- billing periods ---------------------------------------------------------------


def test_month_periods_anchored_on_the_31st_clamp_to_each_months_last_day() -> None:
    anchor = at(2023, 1, 31, 10, 30)
    boundaries = [service.add_interval(anchor, "month", n) for n in range(13)]
    assert [(b.month, b.day) for b in boundaries] == [
        (1, 31), (2, 28), (3, 31), (4, 30), (5, 31), (6, 30),
        (7, 31), (8, 31), (9, 30), (10, 31), (11, 30), (12, 31), (1, 31),
    ]  # fmt: skip
    assert boundaries[12] == at(2024, 1, 31, 10, 30)
    assert all((b.hour, b.minute, b.tzinfo) == (10, 30, UTC) for b in boundaries)


def test_february_of_a_leap_year_ends_on_the_29th() -> None:
    anchor = at(2024, 1, 31)
    assert service.period(anchor, "month", 0) == (at(2024, 1, 31), at(2024, 2, 29))
    assert service.period(anchor, "month", 1) == (at(2024, 2, 29), at(2024, 3, 31))
    assert service.add_interval(anchor, "month", 13) == at(2025, 2, 28)


def test_a_short_month_never_shifts_later_periods() -> None:
    anchor = at(2023, 1, 31, 9)
    # counted from the anchor, not from February's clamped end (which would give Mar 28)
    assert service.period(anchor, "month", 1) == (at(2023, 2, 28, 9), at(2023, 3, 31, 9))
    assert service.period(anchor, "month", 2) == (at(2023, 3, 31, 9), at(2023, 4, 30, 9))
    assert service.period(anchor, "month", 3) == (at(2023, 4, 30, 9), at(2023, 5, 31, 9))
    assert service.add_interval(anchor, "month", 25) == at(2025, 2, 28, 9)


def test_yearly_periods_anchored_on_february_29() -> None:
    anchor = at(2024, 2, 29, 8, 15)
    assert [service.add_interval(anchor, "year", n) for n in range(5)] == [
        at(2024, 2, 29, 8, 15),
        at(2025, 2, 28, 8, 15),
        at(2026, 2, 28, 8, 15),
        at(2027, 2, 28, 8, 15),
        at(2028, 2, 29, 8, 15),  # back on the 29th in the next leap year
    ]
    assert service.period(anchor, "year", 3) == (at(2027, 2, 28, 8, 15), at(2028, 2, 29, 8, 15))


def test_a_year_is_twelve_months() -> None:
    anchor = at(2023, 3, 31, 23, 59)
    for n in range(4):
        assert service.add_interval(anchor, "year", n) == service.add_interval(
            anchor, "month", 12 * n
        )


def _anchor(day: date, hour: int, minute: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


month_ends = st.builds(
    lambda y, m: date(y, m, calendar.monthrange(y, m)[1]),
    st.integers(1990, 2100),
    st.integers(1, 12),
)
anchors = st.builds(
    _anchor,
    st.one_of(st.dates(date(1990, 1, 1), date(2100, 12, 31)), month_ends),
    st.integers(0, 23),
    st.integers(0, 59),
)


@FAST
@given(anchors, st.integers(0, 120))
def test_month_periods_tile_time_and_last_28_to_31_days(anchor: datetime, index: int) -> None:
    start, end = service.period(anchor, "month", index)
    following = service.period(anchor, "month", index + 1)
    assert following[0] == end  # no gap, no overlap
    if index == 0:
        assert start == anchor
    assert timedelta(days=28) <= end - start <= timedelta(days=31)
    assert (end - start) % timedelta(days=1) == timedelta(0)  # hour and minute kept
    assert (start.hour, start.minute) == (anchor.hour, anchor.minute)
    # the anchor's day, or the last day of a month too short for it
    assert start.day == anchor.day or (
        start.day < anchor.day and (start + timedelta(days=1)).day == 1
    )


@FAST
@given(anchors, st.integers(0, 30))
def test_year_periods_tile_time_and_last_365_or_366_days(anchor: datetime, index: int) -> None:
    start, end = service.period(anchor, "year", index)
    assert service.period(anchor, "year", index + 1)[0] == end
    assert end - start in (timedelta(days=365), timedelta(days=366))
    assert start.year == anchor.year + index


# --- usage windows and proration ---------------------------------------------------


def test_ceil_hour() -> None:
    assert service.ceil_hour(at(2024, 5, 1, 10)) == at(2024, 5, 1, 10)  # already whole
    assert service.ceil_hour(at(2024, 5, 1, 10, 0, 1)) == at(2024, 5, 1, 11)
    assert service.ceil_hour(datetime(2024, 5, 1, 10, 0, 0, 1, tzinfo=UTC)) == at(2024, 5, 1, 11)
    assert service.ceil_hour(at(2024, 5, 1, 10, 59, 59)) == at(2024, 5, 1, 11)
    assert service.ceil_hour(at(2024, 12, 31, 23, 30)) == at(2025, 1, 1, 0)


def test_usage_window_bills_usage_up_to_the_end_of_the_cancel_hour() -> None:
    start = at(2024, 5, 1)
    assert service.usage_window(start, at(2024, 6, 1)) == (start, at(2024, 6, 1))
    # cancelled at 14:20:05: the usage of the whole 14:00 bucket is billed
    assert service.usage_window(start, at(2024, 5, 10, 14, 20, 5)) == (start, at(2024, 5, 10, 15))


def test_proration_of_the_whole_period_is_one() -> None:
    assert service.proration(*JAN, JAN[1]) == 1


def test_proration_of_half_a_period_is_exactly_one_half() -> None:
    share = service.proration(at(2024, 4, 1), at(2024, 5, 1), at(2024, 4, 16))
    assert isinstance(share, Decimal)
    assert share == D("0.5")


def test_proration_cut_outside_the_period_is_clamped() -> None:
    assert service.proration(*JAN, at(2023, 12, 1)) == 0
    assert service.proration(*JAN, JAN[0]) == 0
    assert service.proration(*JAN, at(2024, 3, 1)) == 1


def test_proration_counts_whole_seconds() -> None:
    day = (at(2024, 5, 1), at(2024, 5, 2))
    assert service.proration(*day, at(2024, 5, 1, 0, 0, 1)) == D(1) / D(86400)
    # sub-second parts are dropped, not rounded up to the next second
    cut = datetime(2024, 5, 1, 0, 0, 1, 999_999, tzinfo=UTC)
    assert service.proration(*day, cut) == D(1) / D(86400)
    # 10 days 6 hours of a 31-day month
    share = service.proration(*JAN, at(2024, 1, 11, 6))
    assert share == D(10 * 86400 + 6 * 3600) / D(31 * 86400)


def test_proration_of_an_empty_period_is_zero_not_an_error() -> None:
    assert service.proration(JAN[0], JAN[0], JAN[0]) == 0


# --- invoice lines -----------------------------------------------------------------


FULL_PLAN = make_plan(
    flat("platform", "49"),
    per_unit("tokens", "0.002", included="1000"),
    graduated("api"),
    PackagePrice(
        key="storage", name="Storage", meter="storage_gb", package_size=10, package_price=D("5")
    ),
    VolumePrice(
        key="seats", name="Seats", meter="seats", tiers=tiers(("10", "8"), (None, "6", "1"))
    ),
)
FULL_USAGE: dict[str, Decimal | None] = {
    "tokens": D(6000),
    "api": D(1500),
    "storage_gb": D(21),
    "seats": D(12),
}


def test_one_line_per_price_in_plan_order() -> None:
    lines = service.invoice_lines(context(FULL_PLAN), FULL_USAGE)
    assert [(ln.price_key, ln.kind) for ln in lines] == [
        ("platform", "flat"),
        ("tokens", "per_unit"),
        ("api", "graduated"),
        ("storage", "package"),
        ("seats", "volume"),
    ]
    assert [ln.amount for ln in lines] == [
        4900,  # 49 USD
        1000,  # (6000 - 1000 included) * 0.002 = 10 USD
        1750,  # 1000 * 0.01 + 5 + 500 * 0.005 = 17.50 USD
        1500,  # 3 started packages of 10 GB * 5 USD
        7300,  # 12 seats * 6 + 1 = 73 USD
    ]
    assert all(ln.adjustment_for is None for ln in lines)


def test_the_flat_fee_is_prorated_and_usage_is_not() -> None:
    ctx = context(FULL_PLAN, proration=D(1) / D(3))
    lines = lines_by_key(ctx, FULL_USAGE)
    assert lines["platform"].amount == 1633  # 49 / 3 = 16.333... USD
    assert lines["platform"].proration == D(1) / D(3)
    assert (lines["platform"].quantity, lines["platform"].unit_price) == (D(1), D(49))
    assert lines["tokens"].amount == 1000  # the period's usage, billed in full
    assert lines["tokens"].proration == D(1) / D(3)  # the share its minimum spend would take
    half = lines_by_key(context(FULL_PLAN, proration=D("0.5")), {})
    assert half["platform"].amount == 2450


def test_flat_lines_cover_the_period_and_metered_lines_the_hour_aligned_usage_window() -> None:
    cancelled = at(2024, 1, 10, 14, 20, 5)
    ctx = context(FULL_PLAN, end=cancelled, proration=service.proration(*JAN, cancelled))
    lines = lines_by_key(ctx, FULL_USAGE)
    assert (lines["platform"].period_start, lines["platform"].period_end) == (JAN[0], cancelled)
    for key in ("tokens", "api", "storage", "seats"):
        assert (lines[key].period_start, lines[key].period_end) == (JAN[0], at(2024, 1, 10, 15))


def test_metered_quantities_come_from_the_usage_map_by_meter_key() -> None:
    lines = lines_by_key(context(FULL_PLAN), FULL_USAGE)
    assert lines["tokens"].quantity == 6000
    assert lines["api"].quantity == 1500
    assert lines["storage"].quantity == 21  # keyed by the meter, not the price key
    assert lines["seats"].quantity == 12


@pytest.mark.parametrize("value", ["missing", None, D(0), D(-250)])
def test_no_usage_none_or_a_negative_value_is_billed_as_zero(value: Any) -> None:
    usage = {} if value == "missing" else {"tokens": value, "api": value}
    plan = make_plan(per_unit("tokens", "0.5"), graduated("api"))
    lines = lines_by_key(context(plan), usage)
    for key in ("tokens", "api"):
        assert lines[key].amount == 0
        # the line shows the metered value as /usage gives it, a negative one too
        assert lines[key].quantity == (value if isinstance(value, Decimal) else 0)
    assert lines["api"].tiers == ()  # no tier entered: no flat fee either


def test_a_minimum_spend_applies_without_usage() -> None:
    plan = make_plan(per_unit("tokens", "0.01", minimum="10"))
    (line,) = service.invoice_lines(context(plan), {})
    assert line.amount == 1000
    assert line.minimum_applied
    (line,) = service.invoice_lines(context(plan), {"tokens": D(2000)})
    assert (line.amount, line.minimum_applied) == (2000, False)


def test_a_minimum_spend_is_prorated_on_a_partial_period() -> None:
    plan = make_plan(per_unit("tokens", "0.01", minimum="30"))
    (line,) = service.invoice_lines(context(plan, proration=D("0.5")), {"tokens": D(100)})
    assert line.amount == 1500  # half the period: half the 30 USD commitment
    assert line.minimum_applied


@pytest.mark.parametrize(
    ("rounding", "expected"),
    [
        ("half_even", 12),
        ("half_up", 13),
        ("half_down", 12),
        ("up", 13),
        ("down", 12),
        ("ceiling", 13),
        ("floor", 12),
    ],
)
def test_each_line_is_rounded_with_the_invoices_rounding(rounding: str, expected: int) -> None:
    plan = make_plan(per_unit("tokens", "0.000125"))
    (line,) = service.invoice_lines(context(plan, rounding=rounding), {"tokens": D(1000)})
    assert line.amount == expected  # 0.125 USD


def test_half_even_rounds_ties_to_the_even_cent() -> None:
    plan = make_plan(per_unit("tokens", "0.000125"))
    (line,) = service.invoice_lines(context(plan), {"tokens": D(3000)})
    assert line.amount == 38  # 0.375 USD: 37.5 cents -> 38


def test_a_line_is_rounded_once_not_tier_by_tier() -> None:
    plan = make_plan(graduated("api", tiers(("1", "0.005"), (None, "0.005"))))
    (line,) = service.invoice_lines(context(plan), {"api": D(2)})
    # each tier is half a cent (0 after half-even rounding), the line is a whole cent
    assert [p.amount for p in line.tiers] == [D("0.005"), D("0.005")]
    assert line.amount == 1


def test_jpy_lines_are_whole_yen() -> None:
    plan = make_plan(flat("platform", "1000"), per_unit("calls", "0.5"), currency="JPY")
    ctx = context(plan, proration=D(1) / D(3))
    lines = lines_by_key(ctx, {"calls": D(5)})
    assert lines["platform"].amount == 333  # 333.33 JPY
    assert lines["calls"].amount == 2  # 2.5 JPY, half-even
    lines = lines_by_key(context(plan, rounding="half_up"), {"calls": D(5)})
    assert (lines["platform"].amount, lines["calls"].amount) == (1000, 3)


def test_bhd_lines_are_in_fils() -> None:
    plan = make_plan(flat("platform", "10"), per_unit("calls", "0.0125"), currency="BHD")
    lines = lines_by_key(context(plan), {"calls": D(1)})
    assert lines["platform"].amount == 10_000  # 10.000 BHD
    assert lines["calls"].amount == 12  # 12.5 fils, half-even
    lines = lines_by_key(context(plan), {"calls": D(3)})
    assert lines["calls"].amount == 38  # 37.5 fils, half-even


def test_only_metered_lines_carry_a_subject_and_a_meter() -> None:
    lines = lines_by_key(context(FULL_PLAN), FULL_USAGE)
    assert (lines["platform"].subject, lines["platform"].meter) == (None, None)
    assert (lines["tokens"].subject, lines["tokens"].meter) == (SUBJECT, "tokens")
    assert (lines["storage"].subject, lines["storage"].meter) == (SUBJECT, "storage_gb")


def test_unit_prices_shown_on_lines() -> None:
    lines = lines_by_key(context(FULL_PLAN), FULL_USAGE)
    assert lines["platform"].unit_price == D(49)
    assert lines["tokens"].unit_price == D("0.002")
    assert lines["storage"].unit_price == D(5)  # the package price
    assert lines["api"].unit_price is None  # see the tier breakdown
    assert lines["seats"].unit_price is None


def test_tiered_lines_carry_their_tier_breakdown() -> None:
    lines = lines_by_key(context(FULL_PLAN), FULL_USAGE)
    api = [(p.tier, p.quantity, p.unit_price, p.flat_fee, p.amount) for p in lines["api"].tiers]
    assert api == [
        (0, D(1000), D("0.01"), D(5), D(15)),
        (1, D(500), D("0.005"), D(0), D("2.5")),
    ]
    seats = [(p.tier, p.quantity, p.amount) for p in lines["seats"].tiers]
    assert seats == [(1, D(12), D(73))]
    for key in ("platform", "tokens", "storage"):
        assert lines[key].tiers == ()


def test_a_line_as_an_invoice_line_model() -> None:
    line = lines_by_key(context(FULL_PLAN), FULL_USAGE)["api"]
    model = line.model()
    assert isinstance(model, InvoiceLine)
    assert (model.price_key, model.amount, model.quantity) == ("api", 1750, D(1500))
    assert [(t.tier, t.quantity, t.amount) for t in model.tiers] == [
        (0, D(1000), D(15)),
        (1, D(500), D("2.5")),
    ]
    assert D(model.model_dump(mode="json")["tiers"][1]["amount"]) == D("2.5")  # a string


# --- late usage adjustments --------------------------------------------------------


JAN_LABEL = "2024-01-01T00:00Z/2024-02-01T00:00Z"


def test_period_label() -> None:
    assert service.period_label(at(2024, 1, 31, 9, 30), at(2024, 2, 29, 9, 30)) == (
        "2024-01-31T09:30Z/2024-02-29T09:30Z"
    )


def test_late_usage_adds_one_line_for_the_difference() -> None:
    price = per_unit("tokens", "0.01")
    jan = context(make_plan(price))
    entry = billed(jan, price, D(100))
    assert entry.amount == 100

    (line,) = service.adjustments([entry], [D(150)], "USD")

    assert line.amount == 50
    assert line.quantity == 50
    assert line.adjustment_for == JAN_LABEL == service.period_label(*JAN)
    assert JAN_LABEL in line.description
    assert "tokens usage" in line.description
    assert (line.price_key, line.kind, line.meter, line.subject) == (
        "tokens",
        "per_unit",
        "tokens",
        SUBJECT,
    )
    assert (line.period_start, line.period_end) == JAN
    assert line.unit_price == D("0.01")
    assert line.proration == 1


def test_the_adjustment_is_the_new_price_of_the_period_minus_what_was_billed() -> None:
    """Not the price of the extra quantity on its own: the extra units fall in a dearer tier,
    and the line total is rounded once over the period."""
    price = graduated("api", tiers(("100", "0.01"), (None, "0.02")))
    jan = context(make_plan(price))
    (line,) = service.adjustments([billed(jan, price, D(100))], [D(150)], "USD")
    assert line.amount == 200 - 100  # 2.00 USD now, 1.00 USD billed (50 alone: 0.50)
    assert line.quantity == 50
    assert line.tiers == ()


def test_an_adjustment_rounds_the_period_total_once() -> None:
    price = per_unit("tokens", "0.004")
    jan = context(make_plan(price))
    entry = billed(jan, price, D(1))  # 0.004 USD: 0 cents
    assert entry.amount == 0
    (line,) = service.adjustments([entry], [D(2)], "USD")
    assert line.amount == 1  # 0.008 USD: 1 cent, though 1 more unit alone rounds to 0


def test_an_adjustment_uses_the_billed_invoices_rounding() -> None:
    price = per_unit("tokens", "0.000125")
    jan = context(make_plan(price), rounding="half_up")
    (line,) = service.adjustments([billed(jan, price, D(0))], [D(1000)], "USD")
    assert line.amount == 13  # 0.125 USD, half-up (half-even would give 12)


def test_no_adjustment_when_the_amount_is_unchanged() -> None:
    price = per_unit("tokens", "0.01")
    jan = context(make_plan(price))
    assert service.adjustments([billed(jan, price, D(100))], [D(100)], "USD") == []
    assert service.adjustments([billed(jan, price, D(0))], [None], "USD") == []
    assert service.adjustments([billed(jan, price, D(0))], [D(0)], "USD") == []


def test_usage_that_grew_within_the_included_quantity_gets_a_line_of_zero() -> None:
    """Every period whose metered value changed gets a line (docs/invoicing.md, ADR 0008),
    even when the amount does not change."""
    price = per_unit("tokens", "0.01", included="1000")
    jan = context(make_plan(price))
    (line,) = service.adjustments([billed(jan, price, D(200))], [D(900)], "USD")
    assert (line.amount, line.quantity, line.adjustment_for) == (0, D(700), JAN_LABEL)
    (line,) = service.adjustments([billed(jan, price, D(200))], [D(1100)], "USD")
    assert (line.amount, line.quantity) == (100, D(900))  # (1100 - 1000) x 0.01 = 1.00


def test_usage_that_grew_within_a_started_package_gets_a_line_of_zero() -> None:
    price = PackagePrice(
        key="storage", name="Storage", meter="storage_gb", package_size=10, package_price=D(5)
    )
    jan = context(make_plan(price))
    (line,) = service.adjustments([billed(jan, price, D(3))], [D(10)], "USD")
    assert (line.amount, line.quantity) == (0, D(7))
    (line,) = service.adjustments([billed(jan, price, D(3))], [D(11)], "USD")
    assert (line.amount, line.quantity) == (500, D(8))  # 2 packages now, 1 billed: 5.00


def test_the_adjustment_of_a_negative_value_is_the_change_of_the_metered_value() -> None:
    """A period metered at -250 was billed 0 with quantity -250; the adjustment shows the
    change of the metered value (ADR 0008), priced on what is billable (never below 0)."""
    price = per_unit("tokens", "0.01")
    jan = context(make_plan(price))
    entry = billed(jan, price, D(-250))
    assert (entry.amount, entry.quantity) == (0, D(-250))
    (line,) = service.adjustments([entry], [D(-100)], "USD")
    assert (line.amount, line.quantity) == (0, D(150))  # still negative: still 0
    (line,) = service.adjustments([entry], [D(100)], "USD")
    assert (line.amount, line.quantity) == (100, D(350))  # 100 x 0.01 = 1.00 now, 0 billed
    assert service.adjustments([entry], [D(-250)], "USD") == []


def test_usage_that_went_down_gives_a_credit() -> None:
    price = per_unit("tokens", "0.01")
    jan = context(make_plan(price))
    (line,) = service.adjustments([billed(jan, price, D(500))], [D(200)], "USD")
    assert line.amount == -300
    assert line.quantity == -300
    (line,) = service.adjustments([billed(jan, price, D(500))], [None], "USD")
    assert (line.amount, line.quantity) == (-500, D(-500))


def test_entries_billed_in_another_currency_are_skipped() -> None:
    price = per_unit("tokens", "0.01")
    eur = context(make_plan(price, currency="EUR"))
    usd = context(make_plan(price), start=FEB[0], end=FEB[1])
    lines = service.adjustments(
        [billed(eur, price, D(100)), billed(usd, price, D(100))], [D(900), D(300)], "USD"
    )
    assert [(ln.adjustment_for, ln.amount) for ln in lines] == [
        ("2024-02-01T00:00Z/2024-03-01T00:00Z", 200)
    ]


def test_each_earlier_period_gets_its_own_labelled_line_in_order() -> None:
    price = per_unit("tokens", "0.01")
    jan = context(make_plan(price))
    feb = context(make_plan(price), start=FEB[0], end=FEB[1])
    entries = [billed(jan, price, D(10)), billed(feb, price, D(10)), billed(jan, price, D(0))]
    lines = service.adjustments(entries, [D(20), D(10), D(5)], "USD")
    assert [(ln.adjustment_for, ln.amount) for ln in lines] == [(JAN_LABEL, 10), (JAN_LABEL, 5)]


def test_billed_and_current_values_must_pair_up() -> None:
    price = per_unit("tokens", "0.01")
    with pytest.raises(ValueError):
        service.adjustments([billed(context(make_plan(price)), price, D(1))], [], "USD")


ADJ_PRICE = graduated(
    "api",
    tiers(
        ("10", "0.013", "0.5"), ("100.5", "0.0071"), ("1000", "0.00333", "1.25"), (None, "0.001")
    ),
    included="3",
)
quantities = st.integers(0, 2_000_000).map(lambda n: D(n).scaleb(-3))


@FAST
@given(quantities, quantities, st.sampled_from(["half_even", "half_up", "down"]))
def test_billed_plus_adjustment_is_what_a_fresh_invoice_charges(
    q1: Decimal, q2: Decimal, rounding: str
) -> None:
    jan = context(make_plan(ADJ_PRICE), rounding=rounding)
    entry = billed(jan, ADJ_PRICE, q1)
    lines = service.adjustments([entry], [q2], "USD")
    expected = fresh_amount(jan, ADJ_PRICE, q2)
    if q2 == q1:
        assert lines == []
    else:  # a line whenever the metered value changed, even for an unchanged amount
        (line,) = lines
        assert entry.amount + line.amount == expected
        assert line.quantity == q2 - q1
        assert line.adjustment_for == JAN_LABEL


@FAST
@given(st.lists(quantities, min_size=2, max_size=5))
def test_successive_adjustments_keep_the_period_at_its_current_price(
    values: list[Decimal],
) -> None:
    """As the billing runs do: each adjustment is added to what the period has billed."""
    jan = context(make_plan(ADJ_PRICE))
    entry = billed(jan, ADJ_PRICE, values[0])
    for value in values[1:]:
        for line in service.adjustments([entry], [value], "USD"):
            entry.quantity += line.quantity
            entry.amount += line.amount
        assert entry.amount == fresh_amount(jan, ADJ_PRICE, value)


# --- totals ------------------------------------------------------------------------


def test_totals_sum_the_lines_and_add_the_tax() -> None:
    lines = service.invoice_lines(context(FULL_PLAN), FULL_USAGE)
    t = service.totals(lines, D("0.19"), "USD", "half_even")
    assert t.subtotal == sum(ln.amount for ln in lines) == 16_450
    assert t.tax == 3126  # 3125.5 cents, half-even
    assert t.total == t.subtotal + t.tax == 19_576


def test_tax_is_rounded_once_on_the_subtotal_not_per_line() -> None:
    lines = _amount_lines(15, 15)
    t = service.totals(lines, D("0.1"), "USD", "half_up")
    assert (t.subtotal, t.tax, t.total) == (30, 3, 33)  # per line: 2 + 2 = 4


@pytest.mark.parametrize(("rounding", "tax"), [("half_even", 50), ("half_up", 51)])
def test_tax_uses_the_invoices_rounding(rounding: str, tax: int) -> None:
    t = service.totals(_amount_lines(1010), D("0.05"), "USD", rounding)  # 50.5 cents
    assert (t.tax, t.total) == (tax, 1010 + tax)


def test_no_tax_rate_means_no_tax() -> None:
    t = service.totals(_amount_lines(4900, 1234), None, "USD", "half_even")
    assert (t.subtotal, t.tax, t.total) == (6134, 0, 6134)


def test_credits_reduce_the_subtotal_and_its_tax() -> None:
    t = service.totals(_amount_lines(1000, -250), D("0.2"), "USD", "half_even")
    assert (t.subtotal, t.tax, t.total) == (750, 150, 900)


def test_an_empty_invoice_totals_zero() -> None:
    assert service.totals([], D("0.19"), "JPY", "half_even") == service.Totals(0, 0, 0)


def test_tax_exempt_customers_have_no_tax_rate() -> None:
    base = {"external_id": "c-1", "name": "C", "currency": "USD"}
    assert service.effective_tax_rate(CustomerSpec(**base, tax_rate=D("0.19"))) == D("0.19")
    assert service.effective_tax_rate(CustomerSpec(**base)) is None
    assert service.effective_tax_rate(CustomerSpec(**base, tax_exempt=True)) is None


def _amount_lines(*amounts: int) -> list[service.Line]:
    return [
        service.Line(
            price_key=f"p{i}",
            kind="flat",
            description="fee",
            meter=None,
            subject=None,
            period_start=JAN[0],
            period_end=JAN[1],
            quantity=D(1),
            unit_price=None,
            tiers=(),
            proration=D(1),
            minimum_applied=False,
            amount=amount,
        )
        for i, amount in enumerate(amounts)
    ]


# --- invoice state -----------------------------------------------------------------


STATUSES = ["draft", "finalized", "paid", "void", "uncollectible"]
ALLOWED = {
    ("draft", "finalized"),
    ("draft", "void"),
    ("finalized", "paid"),
    ("finalized", "void"),
    ("finalized", "uncollectible"),
    ("uncollectible", "paid"),
    ("uncollectible", "void"),
}
FORBIDDEN = sorted({(a, b) for a in STATUSES for b in STATUSES} - ALLOWED)


@pytest.mark.parametrize(("status", "to"), sorted(ALLOWED))
def test_allowed_transitions(status: str, to: str) -> None:
    service.check_transition(status, to)  # no error


@pytest.mark.parametrize(("status", "to"), FORBIDDEN)
def test_forbidden_transitions_name_both_states(status: str, to: str) -> None:
    with pytest.raises(InvalidTransition) as excinfo:
        service.check_transition(status, to)
    message = str(excinfo.value)
    assert status in message
    assert to in message
    assert excinfo.value.code == "invalid_transition"


def test_paid_and_void_are_final() -> None:
    assert ("paid", "void") in FORBIDDEN
    assert ("void", "paid") in FORBIDDEN
    assert ("draft", "paid") in FORBIDDEN
    for to in STATUSES:
        for final in ("paid", "void"):
            with pytest.raises(InvalidTransition):
                service.check_transition(final, to)


@pytest.mark.parametrize(
    ("status", "total", "paid", "expected"),
    [
        ("finalized", 1000, 1000, True),
        ("finalized", 1000, 1500, True),  # overpaid
        ("finalized", 1000, 999, False),
        ("finalized", 0, 0, True),
        ("uncollectible", 1000, 1000, True),
        ("uncollectible", 1000, 10, False),
        ("draft", 1000, 1000, False),  # not issued yet
        ("paid", 1000, 2000, False),  # already paid
        ("void", 1000, 1000, False),
    ],
)
def test_becomes_paid(status: str, total: int, paid: int, expected: bool) -> None:
    assert service.becomes_paid(status, total, paid) is expected


def test_invoice_numbers_are_zero_padded() -> None:
    assert service.invoice_number("INV", 2031, 42) == "INV-2031-000042"
    assert service.invoice_number("ACME-EU", 2026, 1) == "ACME-EU-2026-000001"
    assert service.invoice_number("INV", 2031, 1_234_567) == "INV-2031-1234567"  # never cut
    numbers = [service.invoice_number("INV", 2031, n) for n in (9, 10, 99, 100)]
    assert numbers == sorted(numbers)  # they sort as they were issued


def _row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "tenant_id": "acme",
        "id": "inv_1",
        "number": "INV-2024-000007",
        "status": "finalized",
        "subscription_id": "sub_1",
        "currency": "USD",
        "period_start": JAN[0],
        "period_end": JAN[1],
        "subtotal": 10_000,
        "tax": 1_900,
        "total": 11_900,
        "amount_paid": 0,
        "tax_rate": D("0.19"),
        "due_at": at(2024, 3, 2),
    }
    return row | overrides


def test_invoice_data_carries_the_rows_values_and_lines() -> None:
    lines = [ln.model() for ln in service.invoice_lines(context(FULL_PLAN), FULL_USAGE)]
    data = service.invoice_data(_row(amount_paid=4_000), SUBJECT, lines)
    assert (data.invoice_id, data.number, data.status) == ("inv_1", "INV-2024-000007", "finalized")
    assert (data.customer, data.subscription_id, data.currency) == (SUBJECT, "sub_1", "USD")
    assert (data.subtotal, data.tax, data.total) == (10_000, 1_900, 11_900)
    assert (data.amount_paid, data.amount_due) == (4_000, 7_900)
    assert (data.period_start, data.period_end, data.due_at) == (*JAN, at(2024, 3, 2))
    assert data.tax_rate == D("0.19")
    assert data.lines == lines
    # a finalized invoice names the receipt that attests it (issued by the receipts worker)
    assert data.receipt_id == receipt_id("acme", "invoice", "inv_1")


def test_invoice_data_amount_due_is_never_negative() -> None:
    data = service.invoice_data(_row(amount_paid=12_500), SUBJECT, [])
    assert (data.amount_paid, data.amount_due) == (12_500, 0)


def test_invoice_data_status_override_and_optional_fields() -> None:
    row = _row(number=None, status="draft", tax_rate=None)
    del row["due_at"]
    data = service.invoice_data(row, SUBJECT, [])
    assert (data.number, data.status, data.tax_rate, data.due_at) == (None, "draft", None, None)
    assert data.receipt_id is None  # a draft is attested by nothing yet
    paid = service.invoice_data(_row(amount_paid=11_900), SUBJECT, [], status="paid")
    assert (paid.status, paid.amount_due) == ("paid", 0)
