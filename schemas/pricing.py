"""Price definitions and plans: what a customer pays for a billing period.

Amounts here are ``Decimal`` in the currency's MAJOR unit (``"0.000125"`` USD per token,
``"49"`` USD a month), never float: at most 12 decimal places, non-negative, below 10**15.
In JSON they are strings (``"0.000125"``) written without an exponent; integers are
accepted too. A JSON float (``0.1``) is refused: it has already been rounded to binary by
the time it is parsed, so write it as a string. (A ``Decimal``, e.g. from
``schemas.jsonexact.loads``, is exact and accepted.)

The invoice line rounds once to integer minor units (``workers/invoicing/pricing.py``).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
)

from schemas.currency import CurrencyCode
from schemas.decimals import dump_decimal
from schemas.metering import METER_KEY_PATTERN

MAX_DECIMAL_PLACES = 12
MAX_INTEGER_DIGITS = 15  # amounts and quantities in definitions stay below 10**15
MAX_TIERS = 100
MAX_PRICES = 100

KEY_PATTERN = METER_KEY_PATTERN  # plan and price keys are slugs, like meter keys

_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def decimal_places(value: Decimal) -> int:
    """Decimal places that carry a digit (``1.2500`` has 2); trailing zeros don't count."""
    _, digits, exp = value.as_tuple()
    assert isinstance(exp, int)  # finite
    places = -exp
    i = len(digits) - 1
    while places > 0 and i >= 0 and digits[i] == 0:
        places -= 1
        i -= 1
    return max(places, 0)


def _parse_nonneg_decimal(value: Any) -> Decimal:
    """Validate a non-negative exact decimal (str, int or Decimal; never float)."""
    if isinstance(value, bool):
        raise ValueError("must be a decimal number, not a boolean")
    if isinstance(value, float):
        raise ValueError(
            f"must be a string or an integer, not a float ({value!r} is already rounded to "
            f'binary): write it as a string, e.g. "{value!r}"'
        )
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, str):
        if not _PLAIN_DECIMAL.fullmatch(value):
            raise ValueError(f"must be a decimal number like '12.5', got {value!r}")
        number = Decimal(value)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"must be a finite number, got {value}")
        number = value
    else:
        raise ValueError(f"must be a decimal number as a string, got {type(value).__name__}")
    if number < 0:
        raise ValueError(f"must be >= 0, got {format(number, 'f')}")
    if decimal_places(number) > MAX_DECIMAL_PLACES:
        raise ValueError(
            f"at most {MAX_DECIMAL_PLACES} decimal places, got {decimal_places(number)} "
            f"in {format(number, 'f')}"
        )
    if number >= Decimal(10) ** MAX_INTEGER_DIGITS:
        raise ValueError(f"must be below 10**{MAX_INTEGER_DIGITS}")
    return number.copy_abs()  # -0 -> 0


_DECIMAL_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        {"type": "integer", "minimum": 0},
    ],
    "description": (
        f"Exact non-negative decimal, at most {MAX_DECIMAL_PLACES} decimal places, as a "
        "string (integers accepted; floats refused)."
    ),
}

NonNegDecimal = Annotated[
    Decimal,
    PlainValidator(_parse_nonneg_decimal, json_schema_input_type=str | int),
    PlainSerializer(dump_decimal, return_type=str, when_used="json"),
    WithJsonSchema(_DECIMAL_JSON_SCHEMA, mode="validation"),
]
"""A non-negative exact decimal (money in major units, or a quantity)."""

Amount = NonNegDecimal  # money in the currency's major unit
Quantity = NonNegDecimal  # a meter's quantity

PriceKey = Annotated[
    str, Field(pattern=KEY_PATTERN, description="Unique within its plan, e.g. 'tokens'.")
]
MeterKey = Annotated[str, Field(pattern=METER_KEY_PATTERN, description="A meter's key.")]
LineName = Annotated[
    str, Field(min_length=1, max_length=256, description="Text of the invoice line.")
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Tier(BaseModel):
    """One tier: quantities up to ``up_to`` (inclusive; null or absent = no bound, the last
    tier) at ``unit_price``, plus ``flat_fee`` once when any quantity falls in the tier."""

    model_config = _FROZEN

    up_to: Quantity | None = None
    unit_price: Amount
    flat_fee: Amount = Decimal(0)

    @field_validator("up_to")
    @classmethod
    def _positive_bound(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and v <= 0:
            raise ValueError("must be > 0 (or null for the last, unbounded tier)")
        return v


def _check_tiers(tiers: list[Tier]) -> list[Tier]:
    """Bounds strictly increasing; exactly the last tier unbounded."""
    last = len(tiers) - 1
    for i, tier in enumerate(tiers):
        if tier.up_to is None and i != last:
            raise ValueError(f"tier {i}: only the last tier may be unbounded (up_to null)")
        if i == last and tier.up_to is not None:
            raise ValueError(
                f"tier {i}: the last tier must be unbounded (up_to null), "
                f"got up_to {format(tier.up_to, 'f')}"
            )
        if i > 0 and tier.up_to is not None:
            previous = tiers[i - 1].up_to
            assert previous is not None  # checked at i - 1
            if tier.up_to <= previous:
                raise ValueError(
                    f"tier {i}: up_to {format(tier.up_to, 'f')} must be greater than tier "
                    f"{i - 1}'s up_to {format(previous, 'f')}"
                )
    return tiers


Tiers = Annotated[
    list[Tier], Field(min_length=1, max_length=MAX_TIERS), AfterValidator(_check_tiers)
]


class FlatPrice(BaseModel):
    """A recurring fee per billing period (prorated for a partial period)."""

    model_config = _FROZEN

    kind: Literal["flat"] = "flat"
    key: PriceKey
    name: LineName
    amount: Amount


class PerUnitPrice(BaseModel):
    """``unit_price`` for each billable unit of ``meter``."""

    model_config = _FROZEN

    kind: Literal["per_unit"] = "per_unit"
    key: PriceKey
    name: LineName
    meter: MeterKey
    unit_price: Amount
    included_quantity: Quantity = Decimal(0)
    minimum_spend: Amount | None = None


class GraduatedPrice(BaseModel):
    """Each billable unit priced by the tier it falls in (the first ``up_to`` units at the
    first tier's price, the next at the second's, ...)."""

    model_config = _FROZEN

    kind: Literal["graduated"] = "graduated"
    key: PriceKey
    name: LineName
    meter: MeterKey
    tiers: Tiers
    included_quantity: Quantity = Decimal(0)
    minimum_spend: Amount | None = None


class VolumePrice(BaseModel):
    """All billable units priced at the tier the total billable quantity falls in."""

    model_config = _FROZEN

    kind: Literal["volume"] = "volume"
    key: PriceKey
    name: LineName
    meter: MeterKey
    tiers: Tiers
    included_quantity: Quantity = Decimal(0)
    minimum_spend: Amount | None = None


class PackagePrice(BaseModel):
    """``package_price`` per started package of ``package_size`` billable units:
    ``ceil(quantity / package_size) * package_price``."""

    model_config = _FROZEN

    kind: Literal["package"] = "package"
    key: PriceKey
    name: LineName
    meter: MeterKey
    package_size: int = Field(ge=1, le=10**MAX_INTEGER_DIGITS, strict=True)
    package_price: Amount
    included_quantity: Quantity = Decimal(0)
    minimum_spend: Amount | None = None


Price = Annotated[
    FlatPrice | PerUnitPrice | GraduatedPrice | VolumePrice | PackagePrice,
    Field(discriminator="kind"),
]
MeteredPrice = PerUnitPrice | GraduatedPrice | VolumePrice | PackagePrice


class PlanSpec(BaseModel):
    """A plan: the prices a subscriber pays, in one currency, each billing interval."""

    model_config = _FROZEN

    key: str = Field(pattern=KEY_PATTERN, description="Unique per tenant, e.g. 'pro'.")
    name: str = Field(min_length=1, max_length=256)
    currency: CurrencyCode
    interval: Literal["month", "year"]
    prices: list[Price] = Field(min_length=1, max_length=MAX_PRICES)
    description: str | None = Field(default=None, max_length=2048)

    @field_validator("prices")
    @classmethod
    def _unique_keys(cls, prices: list[Price]) -> list[Price]:
        first: dict[str, int] = {}
        for i, price in enumerate(prices):
            if price.key in first:
                raise ValueError(
                    f"duplicate price key {price.key!r} (prices {first[price.key]} and {i})"
                )
            first[price.key] = i
        return prices

    def price(self, key: str) -> Price:
        """The price with ``key``; ``KeyError`` if the plan has none."""
        for price in self.prices:
            if price.key == key:
                return price
        raise KeyError(key)
