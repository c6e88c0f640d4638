"""Exact conversion of decimal amounts to integer minor units (shared by adapters)."""

from __future__ import annotations

from decimal import Decimal

from schemas.currency import exponent


def to_minor(amount: Decimal, currency: str) -> int:
    """``Decimal("12.34")``, ``"EUR"`` → ``1234``; ``ValueError`` when the amount has more
    decimal places than the currency (never rounded: a POS total is already final)."""
    digits = exponent(currency)
    scaled = amount.scaleb(digits)
    if not scaled.is_finite() or scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more decimal places than {currency} allows ({digits})")
    return int(scaled)
