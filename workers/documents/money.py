"""Amounts, prices, quantities and dates as a customer reads them, in ``en`` or ``id``.

Pure and exact: integers and ``Decimal`` only, never float; no locale database, no clock.

Amounts (``format_money``) are integer minor units of an ISO 4217 currency; the exponent is
``schemas.currency.exponent`` (JPY 0, USD 2, BHD 3, CLF 4).

The rules, the same for every currency:

- **Separators.** ``en``: "," groups thousands, "." marks the fraction (``$1,234.50``).
  ``id``: "." groups thousands, "," marks the fraction (``Rp 1.234.567``, ``US$ 1.234,50``).
- **Symbols.** ``en``: USD ``$``, EUR ``€``, GBP ``£``, JPY ``¥`` written against the digits;
  IDR ``Rp`` and every other currency its ISO code, then a no-break space (``Rp 1,234,567``,
  ``BHD 1,234.500``). ``id``: IDR ``Rp``, USD ``US$``, EUR ``€``, GBP ``£``, JPY ``JP¥``, every
  other currency its ISO code — always followed by a no-break space (``Rp 1.234.567``,
  ``US$ 1.234,50``, ``BHD 1.234,500``). The no-break space (U+00A0) keeps a symbol on the line
  of its digits.
- **Fraction.** Every digit of the currency's exponent is printed (``$5.00``, ``BHD 1.250``,
  ``CLF 0.1250``), except for the currencies of ``WHOLE_UNIT_CURRENCIES`` (IDR: its minor unit,
  the sen, has no use in practice), whose fraction is printed only when it is not zero:
  ``Rp 1.234.567`` but ``Rp 1.234.567,50``. Nothing is ever rounded away.
- **Sign.** A negative amount has a hyphen-minus before the symbol: ``-$5.00``,
  ``-Rp 5.000``.

Prices and quantities (``format_price``, ``format_decimal``, ``format_quantity``) are
``Decimal``: every significant digit is printed, trailing zeros are dropped down to the
currency's exponent for prices (``$0.00125``, ``$2.00``, ``Rp 1.500``) and to none for
quantities (``1,500``, ``12.5``). Percentages: ``format_percent`` (``11%``, ``1,5%``).

Dates (``format_date``, ``format_period``) are printed in UTC: ``4 December 2026`` /
``4 Desember 2026`` (``short=True``: ``4 Dec 2026`` / ``4 Des 2026``). A billing period is
half-open, ``[start, end)``: an end at midnight is printed as the day before, the last day the
period covers (``1-30 November 2026``, written with an en dash).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from schemas.currency import exponent
from schemas.locales import Locale

NBSP = "\u00a0"
EN_DASH = "\u2013"  # between the days of a period
WHOLE_UNIT_CURRENCIES = frozenset({"IDR"})
"""Currencies whose zero fraction is left off (their minor unit has no use in practice)."""

# (symbol, written against the digits) per locale; other currencies: their ISO code + NBSP
_SYMBOLS: dict[Locale, dict[str, tuple[str, bool]]] = {
    "en": {
        "USD": ("$", True),
        "EUR": ("€", True),
        "GBP": ("£", True),
        "JPY": ("¥", True),
        "IDR": ("Rp", False),
    },
    "id": {
        "IDR": ("Rp", False),
        "USD": ("US$", False),
        "EUR": ("€", False),
        "GBP": ("£", False),
        "JPY": ("JP¥", False),
    },
}
_SEPARATORS: dict[Locale, tuple[str, str]] = {"en": (",", "."), "id": (".", ",")}

MONTHS: dict[Locale, tuple[str, ...]] = {
    "en": (
        "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December",
    ),
    "id": (
        "Januari", "Februari", "Maret", "April", "Mei", "Juni",
        "Juli", "Agustus", "September", "Oktober", "November", "Desember",
    ),
}  # fmt: skip
SHORT_MONTHS: dict[Locale, tuple[str, ...]] = {
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "id": ("Jan", "Feb", "Mar", "Apr", "Mei", "Jun", "Jul", "Agu", "Sep", "Okt", "Nov", "Des"),
}


def currency_symbol(currency: str, locale: Locale) -> str:
    """The symbol ``format_money`` writes for ``currency`` in ``locale`` (its ISO code when it
    has no common symbol there)."""
    return _SYMBOLS[locale].get(currency, (currency, False))[0]


def _group(digits: str, sep: str) -> str:
    head = len(digits) % 3 or 3
    parts = [digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)]
    return sep.join(parts)


def _number(integer: int, fraction: str, locale: Locale) -> str:
    group, point = _SEPARATORS[locale]
    text = _group(str(integer), group)
    return f"{text}{point}{fraction}" if fraction else text


def _with_symbol(number: str, negative: bool, currency: str, locale: Locale) -> str:
    symbol, attached = _SYMBOLS[locale].get(currency, (currency, False))
    sign = "-" if negative else ""
    return f"{sign}{symbol}{'' if attached else NBSP}{number}"


def format_money(amount_minor: int, currency: str, locale: Locale) -> str:
    """``amount_minor`` minor units of ``currency`` as written in ``locale``:
    ``format_money(123450, "USD", "en") == "$1,234.50"``,
    ``format_money(123456700, "IDR", "id") == "Rp\\u00a01.234.567"``."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise TypeError(f"amount_minor must be an int of minor units, not {amount_minor!r}")
    exp = exponent(currency)
    negative = amount_minor < 0
    integer, minor = divmod(abs(amount_minor), 10**exp)
    fraction = str(minor).rjust(exp, "0") if exp else ""
    if currency in WHOLE_UNIT_CURRENCIES and minor == 0:
        fraction = ""
    return _with_symbol(_number(integer, fraction, locale), negative, currency, locale)


def format_decimal(value: Decimal, locale: Locale, *, min_places: int = 0) -> str:
    """``value`` exactly, grouped for ``locale``, with every significant fraction digit and at
    least ``min_places`` of them: ``format_decimal(Decimal("1234.5000"), "id") == "1.234,5"``."""
    if not isinstance(value, Decimal):
        raise TypeError(f"value must be a Decimal, not {type(value).__name__}")
    if not value.is_finite():
        raise ValueError(f"cannot print {value}")
    negative = value.is_signed() and value != 0
    text = format(abs(value), "f")
    integer, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(min_places, "0")
    number = _number(int(integer), fraction, locale)
    return f"-{number}" if negative else number


def format_quantity(value: Decimal, locale: Locale) -> str:
    """A quantity: every significant digit, no trailing zeros (``1,500``, ``12.5``)."""
    return format_decimal(value, locale)


def format_price(value: Decimal, currency: str, locale: Locale) -> str:
    """A unit price or an exact amount in major units of ``currency``: every significant digit,
    at least the currency's exponent of them (``$0.00125``, ``$2.00``, ``¥3``, ``Rp 1.500``)."""
    places = 0 if currency in WHOLE_UNIT_CURRENCIES else exponent(currency)
    if currency in WHOLE_UNIT_CURRENCIES and value != value.to_integral_value():
        places = exponent(currency)
    number = format_decimal(abs(value), locale, min_places=places)
    return _with_symbol(number, value.is_signed() and value != 0, currency, locale)


def format_percent(value: Decimal, locale: Locale) -> str:
    """A percentage given in percent (``Decimal("11")`` is "11%", ``Decimal("1.5")`` is "1.5%"
    in ``en`` and "1,5%" in ``id``)."""
    return f"{format_decimal(value, locale)}%"


def _day(value: date | datetime) -> date:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.date()
    return value


def format_date(value: date | datetime, locale: Locale, *, short: bool = False) -> str:
    """``4 December 2026`` / ``4 Desember 2026`` (``short``: ``4 Dec 2026`` / ``4 Des 2026``);
    a datetime is taken in UTC."""
    day = _day(value)
    months = SHORT_MONTHS[locale] if short else MONTHS[locale]
    return f"{day.day} {months[day.month - 1]} {day.year}"


def last_day(start: datetime, end: datetime) -> date:
    """The last day the half-open period ``[start, end)`` covers (UTC)."""
    end_utc = end.astimezone(UTC) if end.tzinfo is not None else end
    if end > start and end_utc.time() == datetime.min.time():
        return (end_utc - timedelta(days=1)).date()
    return end_utc.date()


def format_period(start: datetime, end: datetime, locale: Locale, *, short: bool = False) -> str:
    """The days ``[start, end)`` covers, joined by an en dash: ``1-30 November 2026``,
    ``15 November - 14 December 2026``, ``4 December 2026`` (a single day),
    ``15 Dec 2026 - 14 Jan 2027``."""
    first, last = _day(start), last_day(start, end)
    months = SHORT_MONTHS[locale] if short else MONTHS[locale]
    if last <= first:
        return format_date(first, locale, short=short)
    if (first.year, first.month) == (last.year, last.month):
        return f"{first.day}{EN_DASH}{last.day} {months[last.month - 1]} {last.year}"
    if first.year == last.year:
        head = f"{first.day} {months[first.month - 1]}"
    else:
        head = format_date(first, locale, short=short)
    return f"{head} {EN_DASH} {format_date(last, locale, short=short)}"
