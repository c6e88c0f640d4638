"""The arithmetic of taxes (workers/invoicing/taxes.py): worked examples by hand, and the
properties a finance team relies on (inclusive: net + tax = gross on every line; the lines'
taxes add up to the invoice's breakdown; rounding exactly like ``decimal``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.invoicing import amounts, taxes
from workers.invoicing.amounts import ROUNDING, Line, totals
from workers.invoicing.errors import TaxRateNotInForce, TaxRatesMixed
from workers.invoicing.taxes import Book, Party, Rate, Taxation, Version

T0 = datetime(2025, 1, 1, tzinfo=UTC)
PPN = Rate("ppn", "PPN", Decimal(12), base=Fraction(11, 12), id="ppn-2025", country="ID")
PPN_LUXURY = Rate("ppn-luxury", "PPN (luxury)", Decimal(12), id="ppn-lux", country="ID")
VAT = Rate("vat-de", "VAT", Decimal(19), id="vat-de", country="DE")
VAT_INCL = Rate("vat-de-incl", "VAT", Decimal(19), inclusive=True, id="vat-incl", country="DE")
GST = Rate("gst", "GST", Decimal(5), id="gst", country="CA")
PST = Rate("pst", "PST", Decimal(7), id="pst", country="CA")
GST_INCL = Rate("gst-i", "GST", Decimal(5), inclusive=True, id="gst-i")
PST_INCL = Rate("pst-i", "PST", Decimal(7), inclusive=True, id="pst-i")
JCT_INCL = Rate("jct", "消費税", Decimal(10), inclusive=True, id="jct", country="JP")


def line(amount: int, *rates: Rate, kind: str = "flat", **kw: object) -> Line:
    return Line(
        price_key=str(kw.pop("key", "p")),
        kind=kind,
        description="d",
        meter=None,
        subject=None,
        period_start=T0,
        period_end=T0,
        quantity=Decimal(1),
        unit_price=None,
        tiers=(),
        proration=Decimal(1),
        minimum_applied=False,
        amount=amount,
        rates=rates if rates else None,
        **kw,  # type: ignore[arg-type]
    )


def invoice(
    lines: list[Line], currency: str = "USD", status: str = "taxable", rounding: str = "invoice"
) -> amounts.Totals:
    return totals(lines, Taxation((), status, rounding), currency, "half_even")  # type: ignore[arg-type]


# --- worked examples ---------------------------------------------------------------------


def test_ppn_is_12_percent_of_a_dpp_of_11_12_of_the_price() -> None:
    # Rp 1,000,000 = 100,000,000 sen: DPP = 100,000,000 x 11/12 = 91,666,666.67 -> 91,666,667;
    # PPN = 91,666,667 x 12 % = 11,000,000.04 -> 11,000,000 (an effective 11 %)
    t = invoice([line(100_000_000, PPN)], "IDR")
    (b,) = t.computed.breakdown
    assert (b.taxable_amount, b.taxable_base, b.tax) == (100_000_000, 91_666_667, 11_000_000)
    assert (t.subtotal, t.tax, t.total) == (100_000_000, 11_000_000, 111_000_000)


def test_luxury_goods_pay_the_full_12_percent_on_the_full_price() -> None:
    t = invoice([line(100_000_000, PPN_LUXURY)], "IDR")
    assert (t.computed.breakdown[0].taxable_base, t.tax) == (100_000_000, 12_000_000)


def test_inclusive_vat_derives_the_net_from_the_gross() -> None:
    # EUR 119.00 gross at 19 % inclusive: tax = 11,900 x 0.19 / 1.19 = 1,900; net 10,000
    t = invoice([line(11_900, VAT_INCL)], "EUR")
    (b,) = t.computed.breakdown
    assert (b.taxable_amount, b.tax) == (10_000, 1_900)
    assert (t.subtotal, t.tax, t.tax_inclusive, t.total) == (11_900, 1_900, 1_900, 11_900)
    # EUR 10.00 gross: tax = 1,000 x 0.19 / 1.19 = 159.66 -> 160, net 840
    t = invoice([line(1_000, VAT_INCL)], "EUR")
    assert (t.computed.breakdown[0].taxable_amount, t.tax, t.total) == (840, 160, 1_000)


def test_jpy_inclusive() -> None:
    # ¥1,100 at 10 % inclusive: tax 100, net 1,000; ¥1,000: 90.9 -> 91, net 909
    assert invoice([line(1_100, JCT_INCL)], "JPY").tax == 100
    t = invoice([line(1_000, JCT_INCL)], "JPY")
    assert (t.computed.breakdown[0].taxable_amount, t.tax, t.total) == (909, 91, 1_000)


def test_two_exclusive_rates_on_one_line() -> None:
    # USD 100.00 with GST 5 % and PST 7 %: 500 + 700, total 11,200
    t = invoice([line(10_000, GST, PST)], "CAD")
    assert [(b.rate.name, b.taxable_amount, b.tax) for b in t.computed.breakdown] == [
        ("gst", 10_000, 500),
        ("pst", 10_000, 700),
    ]
    assert (t.tax, t.total) == (1_200, 11_200)
    assert [a.tax for a in t.computed.lines[0]] == [500, 700]


def test_two_inclusive_rates_on_one_line() -> None:
    # 11,200 gross with 5 % + 7 % inclusive: 11,200 x 0.05 / 1.12 = 500; x 0.07 / 1.12 = 700
    t = invoice([line(11_200, GST_INCL, PST_INCL)], "CAD")
    assert [(b.taxable_amount, b.tax) for b in t.computed.breakdown] == [
        (10_000, 500),
        (10_000, 700),
    ]
    assert t.total == 11_200


def test_invoice_rounding_rounds_once_per_rate_and_apportions_to_the_lines() -> None:
    # three lines of 3.33 at 19 %: per line 63.27 -> 63 (189 in all); per invoice 9.99 x 19 %
    # = 189.81 -> 190, the lines' shares 64 + 63 + 63 (the extra cent to the first)
    lines = [line(333, VAT, key=k) for k in "abc"]
    by_invoice = invoice(lines)
    assert by_invoice.tax == 190
    assert [ln[0].tax for ln in by_invoice.computed.lines] == [64, 63, 63]
    by_line = invoice(lines, rounding="line")
    assert by_line.tax == 189
    assert [ln[0].tax for ln in by_line.computed.lines] == [63, 63, 63]


def test_reverse_charge_and_exempt_show_the_rates_at_zero() -> None:
    for status in ("reverse_charge", "exempt"):
        t = invoice([line(10_000, VAT)], "EUR", status=status)
        (b,) = t.computed.breakdown
        assert (b.taxable_amount, b.tax, b.taxability) == (10_000, 0, status)
        assert (t.tax, t.total) == (0, 10_000)


def test_a_discount_reduces_the_taxable_amount_of_its_line() -> None:
    # 100.00 less a 10.00 discount, 19 %: 90.00 x 19 % = 17.10
    lines = [line(10_000, VAT), line(-1_000, kind="discount", applies_to=0)]
    t = invoice(lines)
    assert (t.subtotal, t.discount, t.tax, t.total) == (10_000, 1_000, 1_710, 10_710)
    assert t.computed.lines[1] == ()  # the discount line carries no tax of its own


def test_a_line_may_not_mix_inclusive_and_exclusive_rates() -> None:
    with pytest.raises(TaxRatesMixed):
        invoice([line(100, VAT, VAT_INCL)])


def test_a_bare_rate_fraction_is_an_exclusive_rate() -> None:
    t = totals([line(10_000)], Decimal("0.19"), "USD", "half_even")
    (b,) = t.computed.breakdown
    assert (b.rate.name, b.rate.percentage, b.rate.id, b.tax) == ("tax", Decimal(19), None, 1_900)


# --- which version is in force -----------------------------------------------------------


def _v(pct: int, start: datetime | None, end: datetime | None) -> Version:
    return Version(Rate("ppn", "PPN", Decimal(pct), id=f"ppn-{pct}"), start, end)


BOOK = Book(
    catalog={"ppn": [_v(11, None, T0), _v(12, T0, None)]},
    default=("ppn",),
)


def _period(start: datetime, end: datetime) -> Line:
    return replace(line(100), period_start=start, period_end=end)


def test_the_version_in_force_at_the_start_of_the_period_applies() -> None:
    dec = datetime(2024, 12, 1, tzinfo=UTC)
    (before,) = BOOK.resolve([_period(dec, T0)], Party())
    (after,) = BOOK.resolve([_period(T0, datetime(2025, 2, 1, tzinfo=UTC))], Party())
    assert before.rates and before.rates[0].percentage == 11
    assert after.rates and after.rates[0].percentage == 12


def test_a_rate_in_force_nowhere_in_the_period_is_refused() -> None:
    book = Book(catalog={"vat": [Version(VAT, T0, datetime(2025, 2, 1, tzinfo=UTC))]})
    march = datetime(2025, 3, 1, tzinfo=UTC)
    with pytest.raises(TaxRateNotInForce, match="in force at no time"):
        book.resolve([_period(march, datetime(2025, 4, 1, tzinfo=UTC))], Party(names=("vat",)))
    with pytest.raises(TaxRateNotInForce, match="no tax rate is named"):
        book.resolve([_period(march, march)], Party(names=("nope",)))


def test_most_specific_wins() -> None:
    book = Book(
        catalog={n: [Version(Rate(n, n, Decimal(p)))] for n, p in [("t", 1), ("c", 2), ("p", 3)]},
        default=("t",),
    )
    plain, priced = book.resolve([line(100), line(100, tax_names=("p",))], Party(names=("c",)))
    assert [r.name for r in plain.rates or ()] == ["c"]
    assert [r.name for r in priced.rates or ()] == ["p"]
    (tenant,) = book.resolve([line(100)], Party())
    assert [r.name for r in tenant.rates or ()] == ["t"]
    (bare,) = book.resolve([line(100)], Party(bare=Decimal("0.08")))
    assert [r.percentage for r in bare.rates or ()] == [Decimal(8)]


# --- properties --------------------------------------------------------------------------

_rates = st.lists(
    st.builds(
        lambda pct, num, den, i: Rate(
            f"r{i}", "R", Decimal(pct) / 4, base=Fraction(min(num, den), den), id=f"r{i}"
        ),
        st.integers(0, 400),
        st.integers(1, 12),
        st.integers(1, 12),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda r: r.name,
)


@settings(max_examples=300, deadline=None)
@given(
    amounts_=st.lists(st.integers(-(10**12), 10**12), min_size=1, max_size=6),
    rates=_rates,
    inclusive=st.booleans(),
    rounding=st.sampled_from(["invoice", "line"]),
)
def test_inclusive_net_plus_tax_is_the_gross_and_lines_add_up(
    amounts_: list[int], rates: list[Rate], inclusive: bool, rounding: str
) -> None:
    rates = [Rate(r.name, r.display_name, r.percentage, inclusive, r.base, r.id) for r in rates]
    lines = [line(a, *rates, key=f"l{i}") for i, a in enumerate(amounts_)]
    t = invoice(lines, rounding=rounding)
    for ln, taxes_ in zip(lines, t.computed.lines, strict=True):
        assert [a.rate for a in taxes_] == rates
        if inclusive:
            nets = {a.taxable_amount for a in taxes_}
            assert len(nets) == 1  # every rate of the line on the same net
            assert nets.pop() + sum(a.tax for a in taxes_) == ln.amount
            if ln.amount >= 0:  # never more tax than the gross
                assert 0 <= sum(a.tax for a in taxes_) <= ln.amount
    for b in t.computed.breakdown:
        shares = [a for ts in t.computed.lines for a in ts if a.rate == b.rate]
        assert sum(a.tax for a in shares) == b.tax
        assert sum(a.taxable_base for a in shares) == b.taxable_base
        assert sum(a.taxable_amount for a in shares) == b.taxable_amount
    assert t.tax == sum(b.tax for b in t.computed.breakdown)
    expected_total = sum(amounts_) + (0 if inclusive else t.tax)
    assert t.total == expected_total


@settings(max_examples=500, deadline=None)
@given(
    num=st.integers(-(10**15), 10**15),
    den=st.integers(1, 10**6),
    mode=st.sampled_from(sorted(ROUNDING)),
)
def test_round_fraction_rounds_exactly_like_decimal(num: int, den: int, mode: str) -> None:
    with localcontext() as ctx:
        ctx.prec = 60
        exact = Decimal(num) / Decimal(den)
        expected = int(exact.quantize(Decimal(1), rounding=ROUNDING[mode]))
    assert taxes.round_fraction(Fraction(num, den), ROUNDING[mode]) == expected


@given(total=st.integers(-(10**9), 10**9), weights=st.lists(st.integers(-1000, 1000), max_size=8))
def test_apportion_always_adds_up(total: int, weights: list[int]) -> None:
    if not weights or sum(weights) == 0:
        total = 0
    assert sum(taxes.apportion(total, weights)) == total


def test_rounding_modes_are_the_tenants() -> None:
    # 5 x 10 % = 0.5: half_even 0, half_up 1
    assert taxes.round_fraction(Fraction(1, 2), ROUND_HALF_EVEN) == 0
    assert taxes.round_fraction(Fraction(1, 2), ROUND_HALF_UP) == 1
    t = totals([line(5, Rate("x", "X", Decimal(10)))], Taxation(), "JPY", "half_up")
    assert t.tax == 1


def test_inclusive_tax_is_rounded_once_for_the_line_and_never_exceeds_the_gross() -> None:
    # gross 1 with 5 % + 7 % inclusive, rounding up: 1 x 0.12 / 1.12 = 0.107 -> 1 in all
    # (each rate rounded up on its own would take 2 of the 1), split 5 : 7 -> PST
    t = totals([line(1, GST_INCL, PST_INCL)], Taxation(), "USD", "up")
    assert [(a.taxable_amount, a.tax) for a in t.computed.lines[0]] == [(0, 0), (0, 1)]
    assert (t.tax, t.total) == (1, 1)


def test_a_tiny_line_never_carries_more_inclusive_tax_than_its_gross() -> None:
    # 19 lines of 1 cent with 5 % + 7 % inclusive: 19 x 0.12 / 1.12 = 2.04 -> 2 in all; each
    # line gets at most 1 of it (apportioning each rate alone gave both cents to line 0)
    t = invoice([line(1, GST_INCL, PST_INCL, key=f"l{i}") for i in range(19)])
    assert t.tax == 2
    per_line = [sum(a.tax for a in taxes_) for taxes_ in t.computed.lines]
    assert per_line == [1, 1] + [0] * 17
    assert all(a.taxable_amount >= 0 for taxes_ in t.computed.lines for a in taxes_)
