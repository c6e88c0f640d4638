"""Exact decimals on the wire: JSON strings, never floats."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import PlainSerializer


def dump_decimal(value: Decimal) -> str:
    return format(value, "f")  # never an exponent: 1E+3 -> "1000"


DecimalStr = Annotated[Decimal, PlainSerializer(dump_decimal, return_type=str, when_used="json")]
"""A computed decimal (may be negative) in messages and views: JSON as a plain string."""
