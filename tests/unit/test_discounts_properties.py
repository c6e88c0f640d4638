"""Properties of discount lines (workers/invoicing/discounts.py) for random invoices: no line
ever goes below zero, each percent discount line is rounded once from the exact value,
amount-off discounts take exactly min(coupon, eligible amount), and
sum(lines) - discount + tax = total (with the discount lines in the lines' sum as negatives)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.invoicing import discounts, service

T0 = datetime(2031, 1, 1, tzinfo=UTC)
T1 = datetime(2031, 2, 1, tzinfo=UTC)
CURRENCIES = ["JPY", "USD", "BHD"]
ROUNDINGS = list(service.ROUNDING)


def charge(
    key: str, amount: int, *, late: bool = False, rate: Decimal | None = None
) -> service.Line:
    return service.Line(
        price_key=key, kind="flat", description=key, meter=None, subject=None,
        period_start=T0, period_end=T1, quantity=Decimal(1), unit_price=None, tiers=(),
        proration=Decimal(1), minimum_applied=False, amount=amount,
        adjustment_for="2030-12" if late else None, tax_rate=rate,
    )  # fmt: skip


def terms(percent: Decimal | None, amount: int | None, prices: list[str] | None) -> discounts.Terms:
    return discounts.Terms(
        name="C", percent_off=percent, amount_off=amount, currency="USD" if amount else None,
        periods=None, plans=frozenset() if prices is not None else None,
        prices=frozenset(prices) if prices is not None else None,
    )  # fmt: skip


percents = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(100), places=2)
amounts = st.integers(min_value=-5_000, max_value=10**9)
keys = st.sampled_from(["base", "calls", "seats"])
lines_st = st.lists(
    st.builds(
        charge,
        keys,
        amounts,
        late=st.booleans(),
        rate=st.sampled_from([None, Decimal("0.1"), Decimal("0.075")]),
    ),
    min_size=1,
    max_size=8,
)
coupons = st.one_of(
    st.builds(terms, percents, st.none(), st.one_of(st.none(), st.lists(keys, min_size=1))),
    st.builds(
        terms,
        st.none(),
        st.integers(min_value=1, max_value=10**9),
        st.one_of(st.none(), st.lists(keys, min_size=1)),
    ),
)


def active(ts: list[discounts.Terms]) -> list[discounts.Active]:
    return [discounts.Active(f"d{i}", None, T0 + timedelta(seconds=i), t) for i, t in enumerate(ts)]


@settings(max_examples=300, deadline=None)
@given(lines_st, st.lists(coupons, min_size=1, max_size=4), st.sampled_from(ROUNDINGS))
def test_discounts_never_make_a_line_negative(
    lines: list[service.Line], ts: list[discounts.Terms], rounding: str
) -> None:
    out, taken = discounts.reduce(lines, active(ts), "pro", rounding)
    after = [ln.amount for ln in lines]
    for d in out:
        assert d.kind == "discount" and d.amount < 0
        assert d.applies_to is not None
        reduced = lines[d.applies_to]
        assert reduced.amount > 0 and reduced.adjustment_for is None
        assert (d.price_key, d.tax_rate, d.period_start) == (
            reduced.price_key, reduced.tax_rate, reduced.period_start,
        )  # fmt: skip
        after[d.applies_to] += d.amount
    for before, now in zip(lines, after, strict=True):
        assert now >= 0 if before.amount > 0 else now == before.amount
    assert sum(taken.values()) == -sum(d.amount for d in out)
    for t, a in zip(ts, active(ts), strict=True):  # amount off: never more than the coupon
        if t.amount_off is not None:
            assert taken[a.id] <= t.amount_off


@settings(max_examples=300, deadline=None)
@given(lines_st, percents, st.sampled_from(ROUNDINGS))
def test_a_percent_line_is_the_exact_value_rounded_once(
    lines: list[service.Line], percent: Decimal, rounding: str
) -> None:
    out, _ = discounts.reduce(lines, active([terms(percent, None, None)]), None, rounding)
    for d in out:
        base = lines[d.applies_to or 0].amount
        exact = Decimal(base) * percent / 100  # exact: at most 9 + 5 digits
        expected = int(exact.quantize(Decimal(1), rounding=service.ROUNDING[rounding]))
        assert -d.amount == min(expected, base)
    eligible = [i for i, ln in enumerate(lines) if ln.amount > 0 and ln.adjustment_for is None]
    assert sorted(d.applies_to for d in out if d.applies_to is not None) == [
        i for i in eligible if discounts.percent_of(lines[i].amount, percent, rounding) > 0
    ]


@settings(max_examples=300, deadline=None)
@given(lines_st, st.integers(min_value=1, max_value=10**9))
def test_an_amount_off_takes_min_of_coupon_and_eligible(
    lines: list[service.Line], amount: int
) -> None:
    out, taken = discounts.reduce(lines, active([terms(None, amount, None)]), None, "half_even")
    eligible = sum(ln.amount for ln in lines if ln.amount > 0 and ln.adjustment_for is None)
    assert taken["d0"] == min(amount, eligible)
    positions = [d.applies_to for d in out]
    assert positions == sorted(positions)  # spread in line order


@settings(max_examples=300, deadline=None)
@given(
    lines_st,
    st.lists(coupons, max_size=3),
    st.sampled_from([None, Decimal("0.1"), Decimal("0.19")]),
    st.sampled_from(CURRENCIES),
    st.sampled_from(ROUNDINGS),
)
def test_lines_less_discount_plus_tax_is_the_total(
    lines: list[service.Line],
    ts: list[discounts.Terms],
    rate: Decimal | None,
    currency: str,
    rounding: str,
) -> None:
    out, _ = discounts.reduce(lines, active(ts), "pro", rounding)
    all_lines = lines + out
    t = service.totals(all_lines, rate, currency, rounding)
    assert t.subtotal == sum(ln.amount for ln in lines)
    assert t.discount == -sum(d.amount for d in out)
    assert t.subtotal - t.discount + t.tax == t.total
    assert sum(ln.amount for ln in all_lines) + t.tax == t.total
    # credits see the net: each charge line's payable is its amount after its discounts
    net = discounts.net_charges(all_lines)
    assert [ln for ln, _ in net] == lines
    assert sum(n for _, n in net) == t.subtotal - t.discount


def test_percent_rounding_is_once_per_line_by_hand() -> None:
    # 20.50 USD at 15 %: 307.5 cents -> 308 (half-even), not 3.08 from a rounded 3.075
    # of an already rounded value; 0.05 USD at 15 %: 0.75 cents -> 1; half-up the same
    lines = [charge("base", 2050), charge("calls", 5)]
    out, taken = discounts.reduce(
        lines, active([terms(Decimal(15), None, None)]), None, "half_even"
    )
    assert [(d.applies_to, d.amount) for d in out] == [(0, -308), (1, -1)]
    assert taken == {"d0": 309}
    assert discounts.percent_of(2050, Decimal(15), "down") == 307
    assert service.ROUNDING["half_even"] == ROUND_HALF_EVEN
