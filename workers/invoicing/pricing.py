"""Pure pricing: a price definition and a quantity in, an exact amount out.

No I/O and no float. Amounts stay exact ``Decimal`` in the currency's major unit until an
invoice line is rounded, once, to integer minor units with ``to_minor`` (half-even by
default, ARCHITECTURE.md §2). Tax is computed once, on the invoice subtotal in minor units.

Arithmetic runs in a local ``decimal.Context`` of 120 digits that traps ``Inexact``: every
intermediate value is exact, or pricing fails loudly (``ValueError``) instead of rounding
silently. Only ``to_minor`` and ``tax_minor`` round, and only where they say.

Semantics:

* ``included_quantity`` is subtracted first: ``billable = max(0, quantity - included)``;
  per-unit, tiers and packages then apply to the billable quantity.
* Graduated: tier ``i`` covers billable quantities in ``(tiers[i-1].up_to, tiers[i].up_to]``
  (bounds inclusive); each unit is priced by its own tier, and a tier's ``flat_fee`` is
  charged once when some quantity falls in the tier.
* Volume: every billable unit is priced at the tier the total falls in (the first tier
  with ``billable <= up_to``), plus that tier's ``flat_fee``.
* Zero billable quantity costs nothing for every metered kind: no tier is entered, so no
  tier's flat fee is charged (a minimum spend still applies).
* Package: ``ceil(billable / package_size) * package_price``; a started package is paid.
* ``proration`` (0..1, the part of the billing period that was served) scales flat fees
  and minimum spends. It does not scale usage: usage metered over a partial period is
  already that period's usage.
* Minimum spend: when the usage amount of a metered price is below
  ``minimum_spend * proration`` the line amount is raised to it and ``minimum_applied``
  is true. The minimum is prorated for the same reason a flat fee is: it is a
  per-period commitment, and a customer who had a third of the period commits a third.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import (
    ROUND_05UP,
    ROUND_CEILING,
    ROUND_DOWN,
    ROUND_FLOOR,
    ROUND_HALF_DOWN,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    ROUND_UP,
    Context,
    Decimal,
    DecimalException,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)

from schemas.currency import exponent
from schemas.pricing import (
    FlatPrice,
    GraduatedPrice,
    PackagePrice,
    PerUnitPrice,
    Price,
    Tier,
    VolumePrice,
)

__all__ = [
    "ROUNDING_MODES",
    "Priced",
    "TierPart",
    "from_minor",
    "invoice_totals",
    "price_usage",
    "tax_minor",
    "to_minor",
]

ROUNDING_MODES = frozenset(
    {
        ROUND_HALF_EVEN,
        ROUND_HALF_UP,
        ROUND_HALF_DOWN,
        ROUND_UP,
        ROUND_DOWN,
        ROUND_CEILING,
        ROUND_FLOOR,
        ROUND_05UP,
    }
)

PRECISION = 120
# exact arithmetic: a result that would need rounding raises instead
_EXACT = Context(
    prec=PRECISION,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact],
)
# the one rounding step (quantize to an integer number of minor units)
_ROUNDING = Context(
    prec=PRECISION,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)
_ZERO = Decimal(0)
_ONE = Decimal(1)


@dataclass(frozen=True)
class TierPart:
    """One tier's contribution to a graduated or volume price (the invoice's breakdown)."""

    tier: int  # index into the price's tiers
    quantity: Decimal
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal  # quantity * unit_price + flat_fee, exact, major units


@dataclass(frozen=True)
class Priced:
    """A priced invoice line, before rounding."""

    quantity: Decimal  # the metered quantity (1 for a flat price)
    billable_quantity: Decimal  # after the included quantity (1 for a flat price)
    amount: Decimal  # exact (unrounded) amount in MAJOR units, after the minimum spend
    parts: tuple[TierPart, ...]  # tier breakdown (empty for flat, per_unit and package)
    minimum_applied: bool  # the usage amount was below the (prorated) minimum spend


def price_usage(price: Price, quantity: Decimal, *, proration: Decimal = _ONE) -> Priced:
    """Price ``quantity`` of a metered price, or one period of a flat price.

    ``quantity`` is ignored (it must still be valid) for a flat price. ``proration`` is the
    served fraction of the period, 0..1: it scales a flat price's amount and a metered
    price's minimum spend, never usage (see the module docstring).

    Raises ``ValueError`` for a negative or non-finite quantity, a proration outside 0..1,
    or a quantity too large or too precise to price exactly; ``TypeError`` for a float.
    """
    q = _decimal("quantity", quantity)
    if q < 0:
        raise ValueError(f"quantity must be >= 0, got {q}")
    p = _decimal("proration", proration)
    if not _ZERO <= p <= _ONE:
        raise ValueError(f"proration must be between 0 and 1, got {p}")
    try:
        with localcontext(_EXACT):
            return _price(price, q, p)
    except DecimalException as e:
        raise ValueError(
            f"cannot price quantity {q} for {price.key!r} exactly: too large or too precise "
            f"({type(e).__name__})"
        ) from None


def _price(price: Price, quantity: Decimal, proration: Decimal) -> Priced:
    if isinstance(price, FlatPrice):
        return Priced(_ONE, _ONE, price.amount * proration, (), False)
    billable = max(quantity - price.included_quantity, _ZERO)
    parts: tuple[TierPart, ...] = ()
    if isinstance(price, PerUnitPrice):
        usage = billable * price.unit_price
    elif isinstance(price, GraduatedPrice):
        parts = _graduated(price.tiers, billable)
        usage = sum((part.amount for part in parts), _ZERO)
    elif isinstance(price, VolumePrice):
        parts = _volume(price.tiers, billable)
        usage = sum((part.amount for part in parts), _ZERO)
    elif isinstance(price, PackagePrice):
        usage = _packages(billable, price.package_size) * price.package_price
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"not a price: {price!r}")
    amount, applied = usage, False
    if price.minimum_spend is not None:
        minimum = price.minimum_spend * proration
        if usage < minimum:
            amount, applied = minimum, True
    return Priced(quantity, billable, amount, parts, applied)


def _part(index: int, tier: Tier, quantity: Decimal) -> TierPart:
    amount = quantity * tier.unit_price + tier.flat_fee
    return TierPart(index, quantity, tier.unit_price, tier.flat_fee, amount)


def _graduated(tiers: Sequence[Tier], billable: Decimal) -> tuple[TierPart, ...]:
    parts: list[TierPart] = []
    lower = _ZERO
    for index, tier in enumerate(tiers):
        if billable <= lower:
            break
        upper = billable if tier.up_to is None else min(billable, tier.up_to)
        parts.append(_part(index, tier, upper - lower))
        if tier.up_to is None:
            break
        lower = tier.up_to
    return tuple(parts)


def _volume(tiers: Sequence[Tier], billable: Decimal) -> tuple[TierPart, ...]:
    if billable == 0:
        return ()
    for index, tier in enumerate(tiers):
        if tier.up_to is None or billable <= tier.up_to:
            return (_part(index, tier, billable),)
    raise AssertionError("the last tier is unbounded")  # pragma: no cover - validated


def _packages(billable: Decimal, size: int) -> Decimal:
    whole, rest = divmod(billable, Decimal(size))
    return whole + 1 if rest > 0 else whole


def to_minor(amount: Decimal, currency: str, rounding: str = ROUND_HALF_EVEN) -> int:
    """``amount`` (major units) as an integer number of ``currency``'s minor units,
    rounded once with ``rounding`` (a ``decimal`` module constant).

    ``to_minor(Decimal("12.345"), "USD") == 1234`` (half-even), ``1235`` with
    ``ROUND_HALF_UP``; ``to_minor(Decimal("12.5"), "JPY") == 12``. Negative amounts
    (credits) round symmetrically.
    """
    a = _decimal("amount", amount)
    _check_rounding(rounding)
    scale = exponent(currency)
    try:
        with localcontext(_EXACT):
            scaled = a.scaleb(scale)
        with localcontext(_ROUNDING):
            return int(scaled.quantize(_ONE, rounding=rounding))
    except DecimalException as e:
        raise ValueError(f"amount {a} {currency} is too large ({type(e).__name__})") from None


def from_minor(amount: int, currency: str) -> Decimal:
    """Integer minor units as an exact ``Decimal`` in major units (1234 USD -> 12.34)."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"amount must be an int of minor units, got {type(amount).__name__}")
    scale = exponent(currency)
    with localcontext(_EXACT):
        return Decimal(amount).scaleb(-scale)


def tax_minor(
    subtotal_minor: int, rate: Decimal, currency: str, rounding: str = ROUND_HALF_EVEN
) -> int:
    """Tax on ``subtotal_minor`` at ``rate`` (``Decimal("0.19")`` for 19 %), rounded once
    to minor units of ``currency``."""
    if isinstance(subtotal_minor, bool) or not isinstance(subtotal_minor, int):
        raise TypeError(f"subtotal must be an int of minor units, got {subtotal_minor!r}")
    r = _decimal("tax rate", rate)
    if r < 0:
        raise ValueError(f"tax rate must be >= 0, got {r}")
    _check_rounding(rounding)
    exponent(currency)  # a known currency, or ValueError
    try:
        with localcontext(_EXACT):
            tax = Decimal(subtotal_minor) * r
        with localcontext(_ROUNDING):
            return int(tax.quantize(_ONE, rounding=rounding))
    except DecimalException as e:
        raise ValueError(f"cannot compute tax at rate {r} ({type(e).__name__})") from None


def invoice_totals(
    line_amounts_minor: Sequence[int],
    tax_rate: Decimal | None,
    currency: str,
    rounding: str = ROUND_HALF_EVEN,
) -> tuple[int, int, int]:
    """``(subtotal, tax, total)`` in minor units: ``subtotal == sum(lines)``, tax computed
    once on the subtotal (0 when ``tax_rate`` is None), ``total == subtotal + tax``."""
    exponent(currency)
    for i, line in enumerate(line_amounts_minor):
        if isinstance(line, bool) or not isinstance(line, int):
            raise TypeError(f"line {i}: amount must be an int of minor units, got {line!r}")
    subtotal = sum(line_amounts_minor)
    tax = 0 if tax_rate is None else tax_minor(subtotal, tax_rate, currency, rounding)
    return subtotal, tax, subtotal + tax


def _decimal(what: str, value: object) -> Decimal:
    """``value`` as a finite Decimal; ints are accepted, floats and bools are not."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{what} must be finite, got {value}")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    raise TypeError(f"{what} must be a Decimal (never a float), got {type(value).__name__}")


def _check_rounding(rounding: str) -> None:
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode {rounding!r}: use a decimal.ROUND_* constant")
