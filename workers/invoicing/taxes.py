"""The taxes of an invoice, pure: which rates each line carries, the tax of each rate on each
line and on the invoice, inclusive and exclusive (docs/taxes.md).

Every amount is exact until it is rounded once, with the tenant's rounding mode:

- exclusive rates: the taxable base is ``round(net x factor)`` and the tax
  ``round(base x percentage / 100)``;
- inclusive rates (the price is the gross): their tax is ``round(gross x e / (1 + e))``,
  ``e`` the sum of ``p x f`` over the line's rates, split between the rates in proportion
  to ``p x f`` (largest remainder); the net is the gross less that tax, so net + tax is
  exactly the gross (and the tax never more than it); the base is ``round(net x factor)``.

With ``line`` rounding that is done on each line. With ``invoice`` rounding (the default)
it is done once per exclusive rate, and once per set of inclusive rates, on the lines'
amounts summed; each line's share is then apportioned by its amount (largest remainder) —
for an inclusive set, the set's tax to the lines, then each line's between its rates — so
the lines' shares always add up to the invoice's figures and no line's inclusive tax is
more than its gross.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import (
    ROUND_CEILING,
    ROUND_DOWN,
    ROUND_FLOOR,
    ROUND_HALF_DOWN,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    ROUND_UP,
    Decimal,
)
from fractions import Fraction
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

from schemas import taxes as schema
from workers.invoicing.errors import TaxRateNotInForce, TaxRatesMixed

if TYPE_CHECKING:
    from workers.invoicing.amounts import Line

TAXABLE: schema.TaxStatus = "taxable"
_D = TypeVar("_D")
DISCOUNT = "discount"


@dataclass(frozen=True)
class Rate:
    """A tax rate as an invoice uses it (a snapshot of one version)."""

    name: str
    display_name: str
    percentage: Decimal  # 12 is 12 %
    inclusive: bool = False
    base: Fraction = Fraction(1)  # the taxable base factor (11/12 for PPN's DPP)
    id: str | None = None  # the version; None for a bare ``tax_rate`` fraction
    country: str | None = None
    jurisdiction: str | None = None
    rate: Fraction = field(init=False, compare=False, repr=False)
    pct: Fraction = field(init=False, compare=False, repr=False)  # the percentage, exactly
    _hash: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        pct = Fraction(self.percentage)
        object.__setattr__(self, "pct", pct)
        object.__setattr__(self, "rate", pct / 100 * self.base)
        key = (self.name, self.display_name, self.percentage, self.inclusive, self.base,
               self.id, self.country, self.jurisdiction)  # fmt: skip
        object.__setattr__(self, "_hash", hash(key))

    def __hash__(self) -> int:  # rates key the groups and breakdowns of every invoice
        return self._hash

    @classmethod
    def bare(cls, fraction: Decimal) -> Rate:
        """A customer's or one-off line's ``tax_rate`` ('0.19'): an exclusive rate (one
        object per fraction: every line of a run shares it)."""
        return _bare(fraction)

    @classmethod
    def of(cls, spec: schema.TaxRateSpec | dict[str, Any]) -> Rate:
        s = spec if isinstance(spec, schema.TaxRateSpec) else schema.TaxRateSpec(**spec)
        return cls(
            name=s.name,
            display_name=s.display_name,
            percentage=s.percentage,
            inclusive=s.inclusive,
            base=schema.parse_factor(s.taxable_base_factor),
            id=s.id,
            country=s.country,
            jurisdiction=s.jurisdiction,
        )


@lru_cache(maxsize=256)
def _bare(fraction: Decimal) -> Rate:
    pct = (fraction * 100).normalize()
    pct = pct.quantize(Decimal(1)) if pct == pct.to_integral_value() else pct
    return Rate(name="tax", display_name=f"Tax {format(pct, 'f')} %", percentage=pct)


@dataclass(frozen=True)
class TaxAmount:
    rate: Rate
    taxable_amount: int
    taxable_base: int
    tax: int
    taxability: schema.TaxStatus = TAXABLE

    @cached_property
    def _model(self) -> schema.TaxAmount:
        # many lines of a run share one rate and amount (a flat fee's tax): one model each,
        # keyed by what it shows (the percentage as written: 20 and 20.0 dump apart)
        r = self.rate
        key = (
            r.id, r.name, r.display_name, str(r.percentage), r.inclusive, r.country,
            r.jurisdiction, r.base, self.taxable_amount, self.taxable_base, self.tax,
            self.taxability,
        )  # fmt: skip
        model = _AMOUNT_MODELS.get(key)
        if model is None:
            if len(_AMOUNT_MODELS) >= _AMOUNT_MODELS_MAX:
                _AMOUNT_MODELS.clear()
            model = _AMOUNT_MODELS[key] = self._validated()
        return model

    @cached_property
    def json(self) -> dict[str, Any]:
        """The contract as JSON values (an invoice's ``tax_breakdown``): shared, never to be
        changed by the caller."""
        return _amount_json(self._model)[0]

    @cached_property
    def json_text(self) -> str:
        """``json`` encoded (an invoice line's ``taxes`` column)."""
        return _amount_json(self._model)[1]

    def _validated(self) -> schema.TaxAmount:
        r = self.rate
        return schema.TaxAmount(
            tax_rate_id=r.id,
            name=r.name,
            display_name=r.display_name,
            percentage=r.percentage,
            inclusive=r.inclusive,
            country=r.country,
            jurisdiction=r.jurisdiction,
            taxable_base_factor=str(r.base),
            taxable_amount=self.taxable_amount,
            taxable_base=self.taxable_base,
            tax=self.tax,
            taxability=self.taxability,
        )

    def model(self) -> schema.TaxAmount:
        """The contract (built once: rows, events and views of a line share it)."""
        return self._model


_AMOUNT_MODELS: dict[tuple[Any, ...], schema.TaxAmount] = {}
_AMOUNT_MODELS_MAX = 10_000
_AMOUNT_JSON: dict[int, tuple[schema.TaxAmount, dict[str, Any], str]] = {}


def _amount_json(model: schema.TaxAmount) -> tuple[dict[str, Any], str]:
    """``model.model_dump(mode="json")`` and its JSON text, once per model (models are
    shared and frozen)."""
    hit = _AMOUNT_JSON.get(id(model))
    if hit is not None and hit[0] is model:
        return hit[1], hit[2]
    if len(_AMOUNT_JSON) >= _AMOUNT_MODELS_MAX:
        _AMOUNT_JSON.clear()
    dumped = model.model_dump(mode="json")
    text = json.dumps(dumped)
    _AMOUNT_JSON[id(model)] = (model, dumped, text)
    return dumped, text


@dataclass(frozen=True)
class Taxation:
    """How one invoice is taxed: the rates of lines that name none, the customer's status
    and where the tax is rounded."""

    default: tuple[Rate, ...] = ()
    status: schema.TaxStatus = TAXABLE
    rounding: schema.TaxRounding = "invoice"

    @classmethod
    def of(cls, tax_rate: Decimal | None) -> Taxation:
        """A customer's bare ``tax_rate`` (None: no tax)."""
        return cls(() if tax_rate is None else (Rate.bare(tax_rate),))


@dataclass(frozen=True)
class Computed:
    lines: tuple[tuple[TaxAmount, ...], ...]  # per input line; () for discount, credit lines
    breakdown: tuple[TaxAmount, ...]  # per rate, in order of first appearance
    tax: int
    inclusive: int  # the part of ``tax`` already in the lines' amounts


NONE = Computed((), (), 0, 0)


def round_fraction(x: Fraction, mode: str) -> int:
    """``x`` rounded to an integer with a ``decimal.ROUND_*`` mode, exactly."""
    return round_ratio(x.numerator, x.denominator, mode)


def round_ratio(n: int, d: int, mode: str) -> int:
    """``n / d`` (``d`` > 0) rounded to an integer with a ``decimal.ROUND_*`` mode, exactly,
    without building a Fraction."""
    q, r = divmod(n, d)  # q = floor(n / d)
    if r == 0:
        return q
    up = q + 1
    if mode == ROUND_FLOOR:
        return q
    if mode == ROUND_CEILING:
        return up
    if mode == ROUND_DOWN:
        return q if n > 0 else up
    if mode == ROUND_UP:
        return up if n > 0 else q
    if 2 * r != d:
        return q if 2 * r < d else up
    if mode == ROUND_HALF_UP:
        return up if n > 0 else q
    if mode == ROUND_HALF_DOWN:
        return q if n > 0 else up
    if mode == ROUND_HALF_EVEN:
        return q if q % 2 == 0 else up
    raise ValueError(f"unknown rounding mode {mode!r}")


def rates_of(line: Line, taxation: Taxation) -> tuple[Rate, ...]:
    """The rates a charge line carries: its own, else its bare ``tax_rate``, else the
    invoice's. ``TaxRatesMixed`` if they mix inclusive and exclusive rates."""
    if line.rates is not None:
        rates = line.rates
    elif line.tax_rate is not None:
        rates = (Rate.bare(line.tax_rate),)
    else:
        rates = taxation.default
    if len({r.inclusive for r in rates}) > 1:
        names = ", ".join(r.name for r in rates)
        raise TaxRatesMixed(f"line {line.price_key!r}: rates {names} mix inclusive and exclusive")
    return rates


def _one(
    amount: int, rates: Sequence[Rate], status: schema.TaxStatus, mode: str
) -> list[TaxAmount]:
    """The tax of each of ``rates`` (all inclusive or all exclusive) on ``amount``."""
    if status != TAXABLE:
        return [
            TaxAmount(r, amount, round_fraction(amount * r.base, mode), 0, status) for r in rates
        ]
    if rates and rates[0].inclusive:
        effective = sum((r.rate for r in rates), Fraction(0))
        whole = round_fraction(amount * effective / (1 + effective), mode)
        taxes = apportion(whole, _split(rates))
        net = amount - whole
        return [
            TaxAmount(r, net, round_fraction(net * r.base, mode), t)
            for r, t in zip(rates, taxes, strict=True)
        ]
    out = []
    for r in rates:
        f, p = r.base, r.pct
        base = amount if f == 1 else round_ratio(amount * f.numerator, f.denominator, mode)
        tax = round_ratio(base * p.numerator, 100 * p.denominator, mode)
        out.append(TaxAmount(r, amount, base, tax))
    return out


def _split(rates: Sequence[Rate]) -> list[int]:
    """How a set of inclusive rates shares its tax: ``p x f`` of each, as integers."""
    common = math.lcm(*(r.rate.denominator for r in rates))
    return [int(r.rate * common) for r in rates]


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder; ties to the first):
    the parts always sum to ``total``."""
    whole = sum(weights)
    if whole == 0:
        return [total if i == 0 else 0 for i in range(len(weights))] if weights else []
    sign = -1 if whole < 0 else 1  # total x w / whole with a positive denominator
    split = [divmod(sign * total * w, sign * whole) for w in weights]  # floor, remainder
    parts = [q for q, _ in split]
    left = total - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-split[i][1], i))
    for i in order[:left]:
        parts[i] += 1
    return parts


def compute(
    lines: Sequence[Line], taxation: Taxation, mode: str, credits_before_tax: int = 0
) -> Computed:
    """The taxes of an invoice of ``lines``: discount lines reduce the line they apply to,
    credit lines (``grant_id``) are not taxed, and ``credits_before_tax`` reduces the taxed
    amounts first (the lines in order of their rates' first appearance)."""
    amounts: dict[int, int] = {}
    sets: dict[int, tuple[Rate, ...]] = {}
    for i, ln in enumerate(lines):
        if ln.grant_id is not None:
            continue
        if ln.kind == DISCOUNT and ln.applies_to is not None and ln.applies_to in sets:
            amounts[ln.applies_to] += ln.amount
            continue
        sets[i] = rates_of(ln, taxation)
        amounts[i] = ln.amount
    if credits_before_tax:
        first: dict[tuple[Rate, ...], int] = {}
        for i in sets:
            first.setdefault(sets[i], i)
        left = credits_before_tax
        for i in sorted(sets, key=lambda i: (first[sets[i]], i)):
            take = min(max(amounts[i], 0), left)
            amounts[i], left = amounts[i] - take, left - take
    per_line: dict[int, list[TaxAmount]] = {i: [] for i in sets}
    if taxation.rounding == "line":
        for i, rates in sets.items():
            per_line[i] = _one(amounts[i], rates, taxation.status, mode)
    else:
        groups: dict[tuple[Rate, ...], list[int]] = {}
        for i, rates in sets.items():
            keys = [rates] if rates and rates[0].inclusive else [(r,) for r in rates]
            for key in keys:
                groups.setdefault(key, []).append(i)
        for key, members in groups.items():
            weights = [amounts[i] for i in members]
            whole = _one(sum(weights), key, taxation.status, mode)
            shares = [
                (apportion(t.tax, weights), apportion(t.taxable_base, weights)) for t in whole
            ]
            if key[0].inclusive:  # the set's tax to the lines, then each line's to its rates
                lines_tax = apportion(sum(t.tax for t in whole), weights)
                split = _split(key)
            for k, i in enumerate(members):
                net, taxes_ = amounts[i], [tax[k] for tax, _ in shares]
                if key[0].inclusive:
                    net -= lines_tax[k]
                    taxes_ = apportion(lines_tax[k], split)
                for t, tax_, (_, base) in zip(whole, taxes_, shares, strict=True):
                    per_line[i].append(TaxAmount(t.rate, net, base[k], tax_, t.taxability))
    out = [tuple(per_line.get(i, ())) for i in range(len(lines))]
    return Computed(tuple(out), breakdown(out), *_sums(out))


def breakdown(per_line: Sequence[Sequence[TaxAmount]]) -> tuple[TaxAmount, ...]:
    """The lines' taxes summed per rate, in order of first appearance."""
    by_rate: dict[tuple[Rate, schema.TaxStatus], list[int]] = {}
    for taxes in per_line:
        for t in taxes:
            s = by_rate.setdefault((t.rate, t.taxability), [0, 0, 0])
            s[0] += t.taxable_amount
            s[1] += t.taxable_base
            s[2] += t.tax
    return tuple(TaxAmount(r, a, b, t, how) for (r, how), (a, b, t) in by_rate.items())


def _sums(per_line: Sequence[Sequence[TaxAmount]]) -> tuple[int, int]:
    tax = sum(t.tax for taxes in per_line for t in taxes)
    inclusive = sum(t.tax for taxes in per_line for t in taxes if t.rate.inclusive)
    return tax, inclusive


# --- which rates a line carries ----------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """A rate version and when it is in force: ``[start, end)``, None unbounded."""

    rate: Rate
    start: datetime | None = None
    end: datetime | None = None

    def in_force(self, t: datetime) -> bool:
        return (self.start is None or self.start <= t) and (self.end is None or t < self.end)


def in_force(name: str, versions: Sequence[Version], start: datetime, end: datetime) -> Rate:
    """The version of ``name`` in force at ``start``; else the first to come into force
    before ``end``. ``TaxRateNotInForce`` if none is in force at any time of the period."""
    for v in versions:
        if v.in_force(start):
            return v.rate
    later = [v for v in versions if v.start is not None and start <= v.start < max(end, start)]
    if later:
        return min(later, key=lambda v: v.start or start).rate
    if not versions:
        raise TaxRateNotInForce(f"no tax rate is named {name!r}")
    raise TaxRateNotInForce(
        f"tax rate {name!r} is in force at no time from {start:%Y-%m-%dT%H:%M:%SZ} "
        f"to {end:%Y-%m-%dT%H:%M:%SZ}"
    )


@dataclass(frozen=True)
class Party:
    """What of a customer decides its tax: its rates by name (None: not set), its bare
    ``tax_rate`` and its status."""

    names: tuple[str, ...] | None = None
    bare: Decimal | None = None
    status: schema.TaxStatus = TAXABLE

    @property
    def tax_rate(self) -> Decimal | None:
        """What an invoice's ``tax_rate`` shows: the bare rate, unless exempt or reverse charge."""
        return self.bare if self.status == TAXABLE else None


@dataclass(frozen=True)
class Book:
    """A tenant's taxes: every version of its rates, by name, and its settings."""

    catalog: Mapping[str, Sequence[Version]] = field(default_factory=dict)
    default: tuple[str, ...] = ()
    rounding: schema.TaxRounding = "invoice"
    notes: Mapping[str, str] = field(default_factory=dict)  # by status: the legal note
    used: set[str] = field(default_factory=set, compare=False)  # versions finalized with
    memo: dict[tuple[tuple[str, ...], datetime, datetime], tuple[Rate, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )  # the rates in force, by names and period (a book lives for one transaction)

    def taxation(self, party: Party) -> Taxation:
        return Taxation((), party.status, self.rounding)

    def note(self, party: Party) -> str | None:
        return self.notes.get(party.status)

    def rates(self, names: Sequence[str], start: datetime, end: datetime) -> tuple[Rate, ...]:
        key = (tuple(names), start, end)  # a run's lines share a few periods and name sets
        found = self.memo.get(key)
        if found is None:
            found = tuple(in_force(n, self.catalog.get(n, ()), start, end) for n in names)
            self.memo[key] = found
        return found

    def resolve(self, lines: Sequence[Line], party: Party) -> list[Line]:
        """``lines`` with the rates each charge line carries: the line's own names (a
        price's, a plan's, a one-off line's), else the customer's, else its bare rate, else
        the tenant's; each name's version in force in the line's period. A line with a bare
        ``tax_rate`` of its own keeps it; discount and credit lines follow their line."""
        out: list[Line] = []
        for ln in lines:
            if ln.grant_id is not None or ln.kind == DISCOUNT or ln.tax_rate is not None:
                out.append(ln)
                continue
            names = ln.tax_names if ln.tax_names is not None else party.names
            if names is None and party.bare is not None:
                rates: tuple[Rate, ...] = (Rate.bare(party.bare),)
            else:
                names = self.default if names is None else names
                rates = self.rates(names, ln.period_start, ln.period_end)
            out.append(ln if ln.rates is rates else evolve(ln, rates=rates))
        return out


def evolve(obj: _D, **changes: Any) -> _D:
    """``dataclasses.replace`` for a line: a frozen dataclass whose fields are all init
    fields, with no ``__post_init__`` (``Line``) — the same copy, without running its
    ``__init__`` (a run copies every line twice: with its rates, with its taxes)."""
    new = object.__new__(type(obj))
    state = new.__dict__
    state.update(obj.__dict__)
    state.update(changes)
    return new


def used(computed: Computed) -> set[str]:
    """The rate versions an invoice's taxes used."""
    return {t.rate.id for t in computed.breakdown if t.rate.id is not None}
