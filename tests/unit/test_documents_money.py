"""Amounts, prices and dates as a customer reads them (workers/documents/money.py): worked
examples by hand in exponents 0, 2, 3 and 4, in ``en`` and ``id``, and the property that the
printed amount reads back as the amount."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.currency import MINOR_UNITS
from schemas.locales import Locale
from workers.documents import (
    LABELS,
    format_date,
    format_decimal,
    format_money,
    format_period,
    format_price,
    format_quantity,
    label,
)

NB = "\u00a0"
DASH = "\u2013"  # en dash


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "expected"),
    [
        # exponent 2
        (123450, "USD", "en", "$1,234.50"),
        (123450, "USD", "id", f"US${NB}1.234,50"),
        (500, "USD", "en", "$5.00"),
        (-500, "USD", "en", "-$5.00"),
        (0, "USD", "en", "$0.00"),
        (7, "USD", "en", "$0.07"),
        (123456789012345, "USD", "en", "$1,234,567,890,123.45"),
        (100, "EUR", "en", "€1.00"),
        (99999, "GBP", "en", "£999.99"),
        (123450, "EUR", "id", f"€{NB}1.234,50"),
        (123450, "SGD", "en", f"SGD{NB}1,234.50"),
        (123450, "SGD", "id", f"SGD{NB}1.234,50"),
        # IDR: exponent 2 in ISO 4217, the zero fraction left off
        (123456700, "IDR", "id", f"Rp{NB}1.234.567"),
        (123456750, "IDR", "id", f"Rp{NB}1.234.567,50"),
        (123456700, "IDR", "en", f"Rp{NB}1,234,567"),
        (-500000, "IDR", "id", f"-Rp{NB}5.000"),
        (1, "IDR", "id", f"Rp{NB}0,01"),
        (0, "IDR", "id", f"Rp{NB}0"),
        # exponent 0
        (1234, "JPY", "en", "¥1,234"),
        (1234, "JPY", "id", f"JP¥{NB}1.234"),
        (-1234567, "JPY", "en", "-¥1,234,567"),
        (999, "KRW", "en", f"KRW{NB}999"),
        # exponent 3
        (1234500, "BHD", "en", f"BHD{NB}1,234.500"),
        (1234500, "BHD", "id", f"BHD{NB}1.234,500"),
        (5, "BHD", "en", f"BHD{NB}0.005"),
        (-35975, "KWD", "en", f"-KWD{NB}35.975"),
        # exponent 4
        (12500, "CLF", "en", f"CLF{NB}1.2500"),
        (1, "CLF", "id", f"CLF{NB}0,0001"),
        (123456789, "UYW", "en", f"UYW{NB}12,345.6789"),
    ],
)
def test_format_money_worked_examples(
    amount: int, currency: str, locale: Locale, expected: str
) -> None:
    assert format_money(amount, currency, locale) == expected


def test_format_money_refuses_what_is_not_minor_units() -> None:
    with pytest.raises(TypeError):
        format_money(Decimal("1.5"), "USD", "en")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_money(True, "USD", "en")
    with pytest.raises(ValueError, match="XAU"):
        format_money(100, "XAU", "en")


@pytest.mark.parametrize(
    ("value", "currency", "locale", "expected"),
    [
        (Decimal("0.00125"), "USD", "en", "$0.00125"),
        (Decimal("2"), "USD", "en", "$2.00"),
        (Decimal("2.50000"), "USD", "en", "$2.50"),
        (Decimal("1234.5"), "USD", "id", f"US${NB}1.234,50"),
        (Decimal("1500"), "IDR", "id", f"Rp{NB}1.500"),
        (Decimal("1500.5"), "IDR", "id", f"Rp{NB}1.500,50"),
        (Decimal("0.125"), "IDR", "id", f"Rp{NB}0,125"),
        (Decimal("3"), "JPY", "en", "¥3"),
        (Decimal("0.5"), "JPY", "en", "¥0.5"),
        (Decimal("0.0075"), "BHD", "en", f"BHD{NB}0.0075"),
        (Decimal("14.75"), "BHD", "en", f"BHD{NB}14.750"),
        (Decimal("-2.5"), "USD", "en", "-$2.50"),
        (Decimal("0.000000000001"), "USD", "en", "$0.000000000001"),
    ],
)
def test_format_price_prints_every_significant_digit(
    value: Decimal, currency: str, locale: Locale, expected: str
) -> None:
    assert format_price(value, currency, locale) == expected


@pytest.mark.parametrize(
    ("value", "locale", "expected"),
    [
        (Decimal("1500"), "en", "1,500"),
        (Decimal("1500"), "id", "1.500"),
        (Decimal("12.50"), "en", "12.5"),
        (Decimal("1234567.125"), "id", "1.234.567,125"),
        (Decimal("1E+3"), "en", "1,000"),
        (Decimal("0"), "en", "0"),
        (Decimal("-0.5"), "id", "-0,5"),
        (Decimal("100"), "en", "100"),
    ],
)
def test_format_quantity(value: Decimal, locale: Locale, expected: str) -> None:
    assert format_quantity(value, locale) == expected


def test_format_decimal_refuses_floats() -> None:
    with pytest.raises(TypeError):
        format_decimal(1.5, "en")  # type: ignore[arg-type]


def test_dates_and_periods() -> None:
    assert format_date(date(2026, 12, 4), "en") == "4 December 2026"
    assert format_date(date(2026, 12, 4), "id") == "4 Desember 2026"
    assert format_date(datetime(2026, 8, 17, 23, 30, tzinfo=UTC), "id") == "17 Agustus 2026"
    assert format_date(date(2026, 10, 1), "id", short=True) == "1 Okt 2026"
    nov, dec = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    # half-open: a period ending at midnight covers the days before it
    assert format_period(nov, dec, "en") == f"1{DASH}30 November 2026"
    assert format_period(nov, dec, "id", short=True) == f"1{DASH}30 Nov 2026"
    mid = datetime(2026, 11, 15, 10, tzinfo=UTC)
    assert format_period(mid, datetime(2026, 12, 15, 10, tzinfo=UTC), "en") == (
        f"15 November {DASH} 15 December 2026"
    )
    assert format_period(dec, datetime(2027, 1, 1, tzinfo=UTC), "id") == f"1{DASH}31 Desember 2026"
    over_new_year = format_period(
        datetime(2026, 12, 15, tzinfo=UTC), datetime(2027, 1, 15, tzinfo=UTC), "en"
    )
    assert over_new_year == f"15 December 2026 {DASH} 14 January 2027"
    assert format_period(mid, mid, "en") == "15 November 2026"


def test_every_locale_has_every_label() -> None:
    keys = {locale: set(table) for locale, table in LABELS.items()}
    assert keys["en"] == keys["id"]
    assert label("amount_due", "id") == "Jumlah terutang"
    assert label("bill_to", "id") == "Ditagihkan kepada"
    assert label("state_paid", "id") == "Lunas"
    for state in ("draft", "due", "overdue", "paid", "void", "uncollectible"):
        assert label(f"state_{state}", "en")
        assert label(f"state_{state}", "id")
    assert label("page_of", "id").format(page=1, total=3) == "Halaman 1 dari 3"


def _read_back(text: str, currency: str, locale: Locale) -> int:
    """The amount a reader gets from ``text``: its sign, its digits, its decimal mark."""
    group, point = (",", ".") if locale == "en" else (".", ",")
    negative = text.startswith("-")
    number = "".join(c for c in text if c.isdigit() or c in (group, point))
    number = number.lstrip(group + point)  # a symbol like "US$" has no digits or marks
    integer, _, fraction = number.replace(group, "").partition(point)
    exp = MINOR_UNITS[currency]
    assert len(fraction) in ((0, exp) if currency == "IDR" else (exp,))
    value = int(integer) * 10**exp + (int(fraction.ljust(exp, "0")) if exp else 0)
    return -value if negative else value


@given(
    amount=st.integers(min_value=-(10**18), max_value=10**18),
    currency=st.sampled_from(sorted(MINOR_UNITS)),
    locale=st.sampled_from(["en", "id"]),
)
def test_format_money_reads_back_as_the_amount(amount: int, currency: str, locale: Locale) -> None:
    text = format_money(amount, currency, locale)
    assert _read_back(text, currency, locale) == amount
    assert "\n" not in text and " " not in text  # one unbreakable token


@given(
    value=st.decimals(
        min_value=Decimal("-1e9"), max_value=Decimal("1e9"), places=12, allow_nan=False
    ),
    locale=st.sampled_from(["en", "id"]),
)
def test_format_decimal_is_exact(value: Decimal, locale: Locale) -> None:
    group, point = (",", ".") if locale == "en" else (".", ",")
    text = format_decimal(value, locale)
    assert Decimal(text.replace(group, "").replace(point, ".")) == value
