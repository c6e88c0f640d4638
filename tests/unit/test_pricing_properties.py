"""Pricing against plain references: tiers unit by unit, rounding against exact fractions."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter

from schemas.currency import exponent
from schemas.pricing import (
    GraduatedPrice,
    PackagePrice,
    PerUnitPrice,
    Price,
    Tier,
    VolumePrice,
)
from workers.invoicing.pricing import from_minor, invoice_totals, price_usage, tax_minor, to_minor

D = Decimal
FAST = settings(max_examples=60, deadline=None)
CURRENCIES = st.sampled_from(["JPY", "USD", "BHD"])
ROUNDINGS = st.sampled_from([ROUND_HALF_EVEN, ROUND_HALF_UP])
PRICE: TypeAdapter[Price] = TypeAdapter(Price)
KINDS: dict[str, type[BaseModel]] = {
    "per_unit": PerUnitPrice,
    "graduated": GraduatedPrice,
    "volume": VolumePrice,
    "package": PackagePrice,
}


def decimals(max_int: int, places: int) -> st.SearchStrategy[Decimal]:
    """Non-negative decimals below ``max_int`` with at most ``places`` decimal places."""
    return st.integers(0, max_int * 10**places - 1).map(lambda n: D(n).scaleb(-places))


unit_prices = decimals(10, 6)
flat_fees = st.one_of(st.just(D(0)), decimals(100, 2))


@st.composite
def integer_tiers(draw: st.DrawFn) -> list[Tier]:
    """1..5 tiers with strictly increasing integer bounds, the last unbounded."""
    bounds = sorted(draw(st.sets(st.integers(1, 300), max_size=4)))
    ups: list[Decimal | None] = [D(b) for b in bounds]
    ups.append(None)
    return [Tier(up_to=up, unit_price=draw(unit_prices), flat_fee=draw(flat_fees)) for up in ups]


@st.composite
def decimal_tiers(draw: st.DrawFn) -> list[Tier]:
    """Like ``integer_tiers`` with bounds of up to 3 decimal places."""
    bounds = sorted(draw(st.sets(decimals(1000, 3).filter(lambda d: d > 0), max_size=4)))
    ups: list[Decimal | None] = [*bounds, None]
    return [Tier(up_to=up, unit_price=draw(unit_prices), flat_fee=draw(flat_fees)) for up in ups]


def tier_of(tiers: list[Tier], quantity: Decimal) -> int:
    """Linear scan: the first tier whose inclusive bound holds ``quantity``."""
    for i, tier in enumerate(tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            return i
    raise AssertionError("unreachable")


def graduated_unit_by_unit(tiers: list[Tier], quantity: int) -> Fraction:
    """Price unit 1, unit 2, ... each at its own tier; each entered tier's fee once."""
    total = Fraction(0)
    entered: set[int] = set()
    for unit in range(1, quantity + 1):
        i = tier_of(tiers, D(unit))
        total += Fraction(tiers[i].unit_price)
        entered.add(i)
    return total + sum((Fraction(tiers[i].flat_fee) for i in entered), Fraction(0))


@FAST
@given(integer_tiers(), st.integers(0, 400))
def test_graduated_matches_unit_by_unit(tiers: list[Tier], quantity: int) -> None:
    price = GraduatedPrice(key="t", name="T", meter="t", tiers=tiers)
    priced = price_usage(price, D(quantity))
    assert Fraction(priced.amount) == graduated_unit_by_unit(tiers, quantity)
    assert sum(p.quantity for p in priced.parts) == quantity
    assert sum(p.amount for p in priced.parts) == priced.amount


@FAST
@given(decimal_tiers(), decimals(1500, 3), decimals(1500, 3))
def test_graduated_parts_and_monotone(tiers: list[Tier], q1: Decimal, q2: Decimal) -> None:
    price = GraduatedPrice(key="t", name="T", meter="t", tiers=tiers)
    low, high = sorted([q1, q2])
    priced = price_usage(price, high)
    assert sum(p.quantity for p in priced.parts) == high
    assert [p.tier for p in priced.parts] == list(range(len(priced.parts)))
    if priced.parts:
        assert priced.parts[-1].tier == tier_of(tiers, high)
    assert price_usage(price, low).amount <= priced.amount


@FAST
@given(decimal_tiers(), decimals(1500, 3))
def test_volume_matches_linear_scan(tiers: list[Tier], quantity: Decimal) -> None:
    price = VolumePrice(key="t", name="T", meter="t", tiers=tiers)
    priced = price_usage(price, quantity)
    if quantity == 0:
        assert priced.amount == 0 and priced.parts == ()
        return
    tier = tiers[tier_of(tiers, quantity)]
    expected = Fraction(quantity) * Fraction(tier.unit_price) + Fraction(tier.flat_fee)
    assert Fraction(priced.amount) == expected
    assert len(priced.parts) == 1 and priced.parts[0].quantity == quantity


@FAST
@given(
    st.sampled_from(sorted(KINDS)),
    integer_tiers(),
    decimals(1000, 2),
    decimals(1000, 2),
)
def test_included_quantity_is_taken_off_first(
    kind: str, tiers: list[Tier], quantity: Decimal, included: Decimal
) -> None:
    def make(included_quantity: Decimal) -> Price:
        fields: dict[str, Any] = {
            "kind": kind,
            "key": "t",
            "name": "T",
            "meter": "t",
            "included_quantity": included_quantity,
            "unit_price": tiers[0].unit_price,
            "tiers": tiers,
            "package_size": 7,
            "package_price": tiers[0].unit_price,
        }
        allowed = set(KINDS[kind].model_fields)
        return PRICE.validate_python({k: v for k, v in fields.items() if k in allowed})

    with_included = price_usage(make(included), quantity)
    billable = max(quantity - included, D(0))
    assert with_included.billable_quantity == billable
    assert with_included.amount == price_usage(make(D(0)), billable).amount


@FAST
@given(
    st.integers(1, 5000),
    decimals(100, 4),
    decimals(20000, 3),
    decimals(20000, 3),
)
def test_package_is_monotone_and_rounds_up(
    size: int, package_price: Decimal, q1: Decimal, q2: Decimal
) -> None:
    price = PackagePrice(
        key="p", name="P", meter="m", package_size=size, package_price=package_price
    )
    low, high = sorted([q1, q2])
    assert price_usage(price, low).amount <= price_usage(price, high).amount
    packages = math.ceil(Fraction(high) / size)
    assert Fraction(price_usage(price, high).amount) == packages * Fraction(package_price)


amounts = st.builds(
    lambda sign, digits, exp: D(sign * digits).scaleb(exp),
    st.sampled_from([1, -1]),
    st.integers(0, 10**18),
    st.integers(-15, 3),
)


@FAST
@given(amounts, st.sampled_from(["JPY", "USD", "BHD", "CLF"]), ROUNDINGS)
def test_to_minor_within_half_a_minor_unit(amount: Decimal, currency: str, rounding: str) -> None:
    exact = Fraction(amount) * 10 ** exponent(currency)
    minor = to_minor(amount, currency, rounding)
    assert abs(minor - exact) <= Fraction(1, 2)
    if exact.denominator == 1:
        assert minor == exact
        assert from_minor(minor, currency) == amount
    if abs(minor - exact) == Fraction(1, 2):  # a tie
        if rounding == ROUND_HALF_EVEN:
            assert minor % 2 == 0
        else:
            assert abs(minor) > abs(exact)


@FAST
@given(st.integers(-(10**15), 10**15), CURRENCIES)
def test_minor_round_trip(minor: int, currency: str) -> None:
    assert to_minor(from_minor(minor, currency), currency) == minor


rates = st.one_of(st.none(), decimals(1, 4))


@FAST
@given(st.lists(st.integers(0, 10**10), max_size=30), rates, CURRENCIES, ROUNDINGS)
def test_totals_add_up(
    lines: list[int], rate: Decimal | None, currency: str, rounding: str
) -> None:
    subtotal, tax, total = invoice_totals(lines, rate, currency, rounding)
    assert subtotal == sum(lines)
    assert total == subtotal + tax
    if rate is None:
        assert tax == 0
    else:
        assert abs(tax - Fraction(subtotal) * Fraction(rate)) <= Fraction(1, 2)
        assert tax == tax_minor(subtotal, rate, currency, rounding)


@FAST
@given(
    st.lists(st.tuples(decimals(10**6, 6), decimals(10**4, 3)), min_size=1, max_size=10),
    CURRENCIES,
)
def test_lines_priced_then_rounded_once_each(
    lines: list[tuple[Decimal, Decimal]], currency: str
) -> None:
    """Each line rounds once; the invoice adds the rounded lines, so Σ lines == subtotal."""
    rounded = []
    for unit_price, quantity in lines:
        price = PerUnitPrice(key="c", name="C", meter="c", unit_price=unit_price)
        amount = price_usage(price, quantity).amount
        assert Fraction(amount) == Fraction(unit_price) * Fraction(quantity)
        rounded.append(to_minor(amount, currency))
    subtotal, tax, total = invoice_totals(rounded, D("0.21"), currency)
    assert subtotal == sum(rounded) and total == subtotal + tax
