"""An invoice's totals from its lines (service.totals): charge lines, discount lines (kind
"discount", negative, reducing the line at ``applies_to``), credit lines (``grant_id``) and
lines with their own tax rate. Worked examples by hand, then properties for random
invoices: sum(lines) - discount + tax = total, tax once per rate."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.invoicing import pricing, service

FAST = settings(max_examples=400, deadline=None)
T0 = datetime(2031, 1, 1, tzinfo=UTC)
D = Decimal


def charge(amount: int, key: str = "base", rate: Decimal | None = None) -> service.Line:
    return service.Line(
        price_key=key, kind="flat", description=key, meter=None, subject=None,
        period_start=T0, period_end=T0, quantity=D(1), unit_price=None, tiers=(),
        proration=D(1), minimum_applied=False, amount=amount, tax_rate=rate,
    )  # fmt: skip


def discount(amount: int, applies_to: int, rate: Decimal | None = None) -> service.Line:
    return service.Line(
        price_key="base", kind="discount", description="20 % off", meter=None, subject=None,
        period_start=T0, period_end=T0, quantity=D(1), unit_price=None, tiers=(),
        proration=D(1), minimum_applied=False, amount=-amount, tax_rate=rate,
        applies_to=applies_to, discount_id="d1",
    )  # fmt: skip


def credit(amount: int) -> service.Line:
    return service.Line(
        price_key="credit", kind="credit", description="credit", meter=None, subject=None,
        period_start=T0, period_end=T0, quantity=D(1), unit_price=None, tiers=(),
        proration=D(1), minimum_applied=False, amount=-amount, grant_id="g1",
    )  # fmt: skip


def test_a_discount_is_not_part_of_the_subtotal_and_tax_is_on_what_is_left() -> None:
    # USD: 49.00 + 12.34, 20 % off the 49.00 = 9.80; tax 10 % of (6134 - 980) = 515.4 -> 515
    lines = [charge(4900), charge(1234, "tokens"), discount(980, 0)]
    t = service.totals(lines, D("0.1"), "USD", "half_even")
    assert (t.subtotal, t.discount, t.tax, t.credits, t.total) == (6134, 980, 515, 0, 5669)


def test_tax_is_computed_once_per_rate_on_the_lines_at_that_rate() -> None:
    # JPY (exponent 0): 1,001 at the invoice's 10 % -> 100.1 -> 100; 2,005 at 11 % ->
    # 220.55 -> 221 (half-even: .55 rounds up); 999 untaxed (rate 0): 0
    lines = [charge(1001), charge(2005, "room", D("0.11")), charge(999, "fee", D(0))]
    t = service.totals(lines, D("0.1"), "JPY", "half_even")
    assert (t.subtotal, t.tax, t.total) == (4005, 100 + 221, 4005 + 321)


def test_before_tax_credits_reduce_the_taxed_amounts_in_the_order_of_the_lines() -> None:
    # BHD (exponent 3): 1.500 at 10 %, 2.000 at 5 %; 1.800 of credits before tax take the
    # whole 1.500 then 0.300 of the 2.000: tax = 0 + 5 % of 1.700 = 0.085
    lines = [charge(1500), charge(2000, "x", D("0.05")), credit(1800)]
    t = service.totals(lines, D("0.1"), "BHD", "half_even", service.BEFORE_TAX)
    assert (t.subtotal, t.credits, t.tax, t.total) == (3500, 1800, 85, 3500 - 1800 + 85)
    after = service.totals(lines, D("0.1"), "BHD", "half_even")
    assert (after.tax, after.total) == (150 + 100, 3500 - 1800 + 250)


def test_an_unknown_currency_is_refused() -> None:
    with pytest.raises(ValueError):
        service.totals([charge(1)], None, "XXZ", "half_even")


rates = st.sampled_from([None, D(0), D("0.05"), D("0.1"), D("0.11"), D("0.19"), D("0.125")])
currencies = st.sampled_from(["JPY", "USD", "BHD", "CLF"])
roundings = st.sampled_from(sorted(service.ROUNDING))


@st.composite
def invoices(draw: st.DrawFn) -> list[service.Line]:
    charges = draw(st.lists(st.tuples(st.integers(-(10**6), 10**9), rates), min_size=1, max_size=8))
    lines = [charge(a, f"p{i}", r) for i, (a, r) in enumerate(charges)]
    for i, (a, r) in enumerate(charges):
        if a > 0 and draw(st.booleans()):
            lines.append(discount(draw(st.integers(0, a)), i, r))
    lines += [credit(draw(st.integers(1, 10**8))) for _ in range(draw(st.integers(0, 2)))]
    return lines


@FAST
@given(invoices(), rates, currencies, roundings, st.sampled_from(["after_tax", "before_tax"]))
def test_lines_less_discounts_plus_tax_is_the_total(
    lines: list[service.Line], rate: Decimal | None, currency: str, rounding: str, mode: str
) -> None:
    t = service.totals(lines, rate, currency, rounding, mode)
    charges = [ln for ln in lines if ln.kind not in ("discount", "credit")]
    assert t.subtotal == sum(ln.amount for ln in charges)
    assert t.discount == -sum(ln.amount for ln in lines if ln.kind == "discount") >= 0
    assert t.credits == -sum(ln.amount for ln in lines if ln.kind == "credit") >= 0
    assert t.total == t.subtotal - t.discount - t.credits + t.tax
    assert t.total == sum(ln.amount for ln in lines) + t.tax  # every line, credits included
    if mode == "after_tax":  # tax once per rate, on its charge lines less their discounts
        bases: dict[Decimal | None, int] = {}
        for ln in lines:
            if ln.kind != "credit":
                r = rate if ln.tax_rate is None else ln.tax_rate
                bases[r] = bases.get(r, 0) + ln.amount
        expected = sum(
            pricing.tax_minor(b, r, currency, service.ROUNDING[rounding])
            for r, b in bases.items()
            if r is not None
        )
        assert t.tax == expected


@FAST
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=6), rates, currencies, roundings)
def test_with_one_rate_the_tax_is_the_tax_of_the_discounted_subtotal(
    amounts: list[int], rate: Decimal | None, currency: str, rounding: str
) -> None:
    lines = [charge(a, f"p{i}") for i, a in enumerate(amounts)]
    lines += [discount(a // 3, i) for i, a in enumerate(amounts)]
    t = service.totals(lines, rate, currency, rounding)
    net = t.subtotal - t.discount
    assert t.tax == service.taxed(net, rate, currency, rounding)
