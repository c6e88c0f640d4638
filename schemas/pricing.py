"""Price definitions and plans: what a customer pays for a billing period.

Amounts here are ``Decimal`` in the currency's MAJOR unit (``"0.000125"`` USD per token,
``"49"`` USD a month), never float: at most 12 decimal places, non-negative, below 10**15.
In JSON they are strings (``"0.000125"``) written without an exponent; integers are
accepted too. A JSON float (``0.1``) is refused: it has already been rounded to binary by
the time it is parsed, so write it as a string. (A ``Decimal``, e.g. from
``schemas.jsonexact.loads``, is exact and accepted.)

Money amounts of a plan (flat amounts, unit prices, tier prices and fees, package prices,
minimum spends) must also stay below 10**15 minor units of the plan's currency
(``"9999999999999.99"`` USD, ``"999999999999999"`` JPY, ``"99999999999.9999"`` CLF), and a
plan's fixed charges (flat amounts, every tier's flat fee, minimum spends) at most 10**17
minor units summed, so an invoice's fixed part always fits a 64-bit integer
(docs/adr/0043-bounded-values.md).

The invoice line rounds once to integer minor units (``workers/invoicing/pricing.py``).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from schemas import bounds
from schemas.bounds import Currency, Line, ShowBounds, Text, decimal_places
from schemas.currency import exponent
from schemas.decimals import dump_decimal
from schemas.metering import METER_KEY_PATTERN

MAX_DECIMAL_PLACES = bounds.MAX_FRACTION_DIGITS
MAX_INTEGER_DIGITS = bounds.MAX_INTEGER_DIGITS  # amounts and quantities stay below 10**15
MAX_TIERS = 100
MAX_PRICES = 100

KEY_PATTERN = METER_KEY_PATTERN  # plan and price keys are slugs, like meter keys

_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


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
    ShowBounds(
        {  # beside the anyOf: ``pattern`` bounds the string form, ``maximum`` the integer
            "pattern": rf"^0*[0-9]{{1,{MAX_INTEGER_DIGITS}}}"
            rf"(\.[0-9]{{1,{MAX_DECIMAL_PLACES}}}0*)?$",
            "maximum": 10**MAX_INTEGER_DIGITS - 1,
        }
    ),
]
"""A non-negative exact decimal (money in major units, or a quantity): below 10**15, at most
12 decimal places."""

Amount = NonNegDecimal  # money in the currency's major unit
Quantity = NonNegDecimal  # a meter's quantity

PriceKey = Annotated[
    str, Field(pattern=KEY_PATTERN, description="Unique within its plan, e.g. 'tokens'.")
]
MeterKey = Annotated[str, Field(pattern=METER_KEY_PATTERN, description="A meter's key.")]
LineName = Annotated[
    Line, Field(min_length=1, max_length=256, description="Text of the invoice line.")
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")
MAX_TAX_RATES = 5  # rates one level (tenant, customer, plan, price, line) may name
RateName = Annotated[
    str, Field(pattern=KEY_PATTERN, description="A tax rate's name (docs/taxes.md)")
]


def _unique_names(names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise ValueError("a tax rate may be named once")
    return names


TaxRateNames = Annotated[
    list[RateName], Field(max_length=MAX_TAX_RATES), AfterValidator(_unique_names)
]
_TAX_RATES = "The tax rates of its lines, by name, overriding the customer's (docs/taxes.md)"


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
    tax_rates: TaxRateNames | None = Field(
        default=None, description="This price's tax rates, overriding the plan's"
    )
    amount: Amount


class PerUnitPrice(BaseModel):
    """``unit_price`` for each billable unit of ``meter``."""

    model_config = _FROZEN

    kind: Literal["per_unit"] = "per_unit"
    key: PriceKey
    name: LineName
    tax_rates: TaxRateNames | None = Field(
        default=None, description="This price's tax rates, overriding the plan's"
    )
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
    tax_rates: TaxRateNames | None = Field(
        default=None, description="This price's tax rates, overriding the plan's"
    )
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
    tax_rates: TaxRateNames | None = Field(
        default=None, description="This price's tax rates, overriding the plan's"
    )
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
    tax_rates: TaxRateNames | None = Field(
        default=None, description="This price's tax rates, overriding the plan's"
    )
    meter: MeterKey
    package_size: Annotated[
        int, Field(ge=1, le=10**MAX_INTEGER_DIGITS), BeforeValidator(bounds.json_integer)
    ]
    package_price: Amount
    included_quantity: Quantity = Decimal(0)
    minimum_spend: Amount | None = None


Price = Annotated[
    FlatPrice | PerUnitPrice | GraduatedPrice | VolumePrice | PackagePrice,
    Field(discriminator="kind"),
    ShowBounds({"required": ["kind"]}),  # the tag picks the variant: it must be given
]
MeteredPrice = PerUnitPrice | GraduatedPrice | VolumePrice | PackagePrice


def _money_of(price: Price) -> list[tuple[str, Decimal, bool]]:
    """(where, amount, whether it is a fixed charge) of every money amount of ``price``."""
    if isinstance(price, FlatPrice):
        return [("amount", price.amount, True)]
    out: list[tuple[str, Decimal, bool]] = []
    if isinstance(price, PerUnitPrice):
        out.append(("unit_price", price.unit_price, False))
    elif isinstance(price, PackagePrice):
        out.append(("package_price", price.package_price, False))
    else:
        for j, tier in enumerate(price.tiers):
            out.append((f"tiers[{j}].unit_price", tier.unit_price, False))
            out.append((f"tiers[{j}].flat_fee", tier.flat_fee, True))
    if price.minimum_spend is not None:
        out.append(("minimum_spend", price.minimum_spend, True))
    return out


class PlanSpec(BaseModel):
    """A plan: the prices a subscriber pays, in one currency, each billing interval."""

    model_config = _FROZEN

    key: str = Field(pattern=KEY_PATTERN, description="Unique per tenant, e.g. 'pro'.")
    name: Line = Field(min_length=1, max_length=256)
    currency: Currency
    interval: Literal["month", "year"]
    prices: list[Price] = Field(min_length=1, max_length=MAX_PRICES)
    description: Text | None = Field(default=None, max_length=2048)
    trial_days: int | None = Field(
        default=None, ge=1, le=730, description="Subscriptions start with a trial this long"
    )
    tax_rates: TaxRateNames | None = Field(default=None, description=_TAX_RATES)

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

    @field_validator("prices")
    @classmethod
    def _money_fits(cls, prices: list[Price], info: ValidationInfo) -> list[Price]:
        """Every money amount below 10**15 minor units of the plan's currency, and the fixed
        charges at most 10**17 summed: an invoice's fixed part always fits bigint."""
        currency = info.data.get("currency")  # absent when it was itself invalid
        if currency is None:
            return prices
        scale = Decimal(10) ** exponent(currency)
        fixed = Decimal(0)
        for i, price in enumerate(prices):
            for where, amount, is_fixed in _money_of(price):
                minor = amount * scale
                if minor > bounds.MAX_MINOR_UNITS:
                    raise ValueError(
                        f"prices[{i}].{where}: {format(amount, 'f')} {currency} is "
                        f"{format(minor, 'f')} minor units; at most {bounds.MAX_MINOR_UNITS}"
                    )
                if is_fixed:
                    fixed += minor
        if fixed > bounds.MAX_PLAN_FIXED_MINOR_UNITS:
            raise ValueError(
                f"the fixed charges (flat amounts, tier flat fees, minimum spends) add up to "
                f"{format(fixed, 'f')} minor units of {currency}; at most "
                f"{bounds.MAX_PLAN_FIXED_MINOR_UNITS}"
            )
        return prices

    def price(self, key: str) -> Price:
        """The price with ``key``; ``KeyError`` if the plan has none."""
        for price in self.prices:
            if price.key == key:
                return price
        raise KeyError(key)
