"""How times, numbers and money are spelled in alert messages."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from schemas.currency import exponent


def utc_text(t: datetime) -> str:
    """``t`` in UTC to the minute, whatever offset it came with (naive: taken as UTC)."""
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return f"{t:%Y-%m-%d %H:%M} UTC"


def text_of(value: Decimal) -> str:
    """One spelling per number (80, 80.0 and 8E+1 are "80")."""
    return format(value.normalize(), "f") if value else "0"


def money(minor: int, currency: str) -> str:
    places = exponent(currency)
    return f"{format(Decimal(minor).scaleb(-places), 'f')} {currency}"
