"""One-off invoices' lines and totals, pure: each line rounded once, tax once per rate, by
hand in three currency exponents and as properties."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.one_off import OneOffInvoiceSpec, OneOffLine
from workers.invoicing import amounts, one_off_service, pricing
from workers.invoicing.errors import AmountOutOfRange, Conflict

AT = datetime(2026, 12, 4, 9, tzinfo=UTC)


def spec(lines: list[dict[str, Any]], **extra: Any) -> OneOffInvoiceSpec:
    return OneOffInvoiceSpec.model_validate({"invoice_id": "inv-1", "customer": "c"} | extra
                                            | {"lines": lines})  # fmt: skip


def ln(q: str, p: str, rate: str | None = None) -> dict[str, Any]:
    return {"description": "x", "quantity": q, "unit_price": p, "tax_rate": rate}


def totals(s: OneOffInvoiceSpec, currency: str, rate: str) -> tuple[list[int], amounts.Totals]:
    lines = one_off_service.lines(s, currency, "half_even", AT, tax_exempt=False)
    return [x.amount for x in lines], amounts.totals(lines, Decimal(rate), currency, "half_even")


def test_jpy_by_hand() -> None:
    # 2 x 12345.5 = 24691; 3 x 1333.5 = 4000.5 -> 4000 (half-even, 8 %);
    # 1.5 x 1001 = 1501.5 -> 1502; tax 10 % of 26193 = 2619.3 -> 2619, 8 % of 4000 = 320
    got = totals(spec([ln("2", "12345.5"), ln("3", "1333.5", "0.08"), ln("1.5", "1001")]),
                 "JPY", "0.1")  # fmt: skip
    assert got == ([24691, 4000, 1502], amounts.Totals(30193, 2939, 33132))


def test_usd_by_hand() -> None:
    # 499.995 -> 49999.5 -> 50000; 2.5 x 80.333 = 200.8325 -> 20083 (7 %);
    # 3 x 12.125 = 36.375 -> 3637.5 -> 3638; tax 19 % of 53638 = 10191.22 -> 10191,
    # 7 % of 20083 = 1405.81 -> 1406
    got = totals(spec([ln("1", "499.995"), ln("2.5", "80.333", "0.07"), ln("3", "12.125")]),
                 "USD", "0.19")  # fmt: skip
    assert got == ([50000, 20083, 3638], amounts.Totals(73721, 11597, 85318))


def test_bhd_by_hand() -> None:
    # 3 x 1.23455 = 3.70365 -> 3704 fils; 25.0005 -> 25000.5 -> 25000 (5 %);
    # 7 x 0.1235 = 0.8645 -> 864.5 -> 864 (5 %); tax 10 % of 3704 = 370.4 -> 370,
    # 5 % of 25864 = 1293.2 -> 1293
    got = totals(
        spec([ln("3", "1.23455"), ln("1", "25.0005", "0.05"), ln("7", "0.1235", "0.05")]),
        "BHD", "0.1",
    )  # fmt: skip
    assert got == ([3704, 25000, 864], amounts.Totals(29568, 1663, 31231))


def test_a_line_is_rounded_once_not_per_unit() -> None:
    # 3 x 0.005 USD = 0.015 -> 1.5 cents -> 2 (half-even); per unit it would be 3 x 0 = 0
    [line] = one_off_service.lines(spec([ln("3", "0.005")]), "USD", "half_even", AT,
                                   tax_exempt=False)  # fmt: skip
    assert line.amount == 2
    assert (line.kind, line.price_key, line.tax_rate) == ("one_off", "one_off", None)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"quantity": "0"}, "quantity"),
        ({"quantity": "-1"}, "quantity"),
        ({"quantity": 1.5}, "quantity"),
        ({"unit_price": "-0.01"}, "unit_price"),
        ({"tax_rate": "1.01"}, "tax_rate"),
        ({"period_start": "2026-01-01T00:00:00Z"}, "period_start"),
    ],
)
def test_a_line_refuses(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        OneOffLine.model_validate(ln("1", "1") | bad)
    assert field in str(e.value)


def test_lines_are_bounded() -> None:
    with pytest.raises(ValidationError):
        spec([])
    with pytest.raises(ValidationError):
        spec([ln("1", "1")] * 251)
    assert len(spec([ln("1", "1")] * 250).lines) == 250


def test_a_tax_exempt_customer_and_a_line_too_large_are_refused_naming_the_line() -> None:
    with pytest.raises(Conflict) as c:
        one_off_service.lines(spec([ln("1", "1"), ln("1", "1", "0.1")]), "USD", "half_even",
                              AT, tax_exempt=True)  # fmt: skip
    assert c.value.field == "lines[1].tax_rate"
    # 10**14 x 100 USD = 10**16 USD: beyond 10**15 minor units
    with pytest.raises(AmountOutOfRange) as a:
        one_off_service.lines(spec([ln("100000000000000", "100")]), "USD", "half_even", AT,
                              tax_exempt=False)  # fmt: skip
    assert a.value.field == "lines[0].unit_price"


def test_the_idempotency_digest_compares_content_by_value() -> None:
    base = spec([ln("1.5", "10.50")], idempotency_key="k")
    same = spec([ln("1.50", "10.5")], idempotency_key="other", invoice_id="x")
    assert one_off_service.digest(base, "USD") == one_off_service.digest(same, "USD")
    for other in (
        spec([ln("1.5", "10.51")]),
        spec([ln("1.5", "10.50")], memo="m"),
        spec([ln("1.5", "10.50")], finalize=True),
    ):
        assert one_off_service.digest(other, "USD") != one_off_service.digest(base, "USD")
    assert one_off_service.digest(base, "EUR") != one_off_service.digest(base, "USD")


CURRENCIES = ["JPY", "USD", "BHD", "KWD", "EUR"]
RATES = st.sampled_from([None, "0", "0.05", "0.07", "0.1", "0.19", "0.2", "1"])
DECIMALS = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("99999"), places=6)


@given(
    currency=st.sampled_from(CURRENCIES),
    invoice_rate=st.sampled_from([None, Decimal("0.1"), Decimal("0.19")]),
    rows=st.lists(
        st.tuples(DECIMALS, DECIMALS | st.just(Decimal(0)), RATES), min_size=1, max_size=20
    ),
    rounding=st.sampled_from(sorted(amounts.ROUNDING)),
)
def test_lines_minus_discount_plus_tax_is_the_total(
    currency: str,
    invoice_rate: Decimal | None,
    rows: list[tuple[Decimal, Decimal, str | None]],
    rounding: str,
) -> None:
    s = spec([ln(str(q), str(p), r) for q, p, r in rows])
    lines = one_off_service.lines(s, currency, rounding, AT, tax_exempt=False)
    t = amounts.totals(lines, invoice_rate, currency, rounding)
    assert sum(x.amount for x in lines) - t.discount + t.tax == t.total
    assert t.discount == 0 and t.credits == 0
    mode = amounts.ROUNDING[rounding]
    for x, (q, p, r) in zip(lines, rows, strict=True):
        assert x.amount == pricing.to_minor(q * p, currency, mode)  # rounded once
        assert x.tax_rate == (None if r is None else Decimal(r))
    bases: dict[Decimal | None, int] = {}
    for x in lines:
        rate = x.tax_rate if x.tax_rate is not None else invoice_rate
        bases[rate] = bases.get(rate, 0) + x.amount
    assert t.tax == sum(
        pricing.tax_minor(b, r, currency, mode) for r, b in bases.items() if r is not None
    )  # once per rate
