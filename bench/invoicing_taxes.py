"""The taxes of the billing-run bench (``bench/invoicing.py --taxes``): the rate versions it
seeds straight into ``tax_rates``, the rates each customer names, and every invoice's taxes
computed by hand, independently of workers/invoicing/taxes.py, with the rules of
docs/taxes.md (the tenant's default ``invoice`` rounding, half-even):

- exclusive rates: once per rate on the invoice, base = round(net x factor) and
  tax = round(base x percentage / 100);
- a set of inclusive rates: once per set, their tax = round(gross x e / (1 + e)), e the
  sum of p x f, split between the rates in proportion to p x f (largest remainder), the
  net = gross - that tax, base = round(net x factor);
- each line's share of a rate's tax and base is in proportion to its amount, so it is the
  exact share rounded down or up, and the lines' shares add up to the invoice's figures;
- total = subtotal - discount - credits + tax - tax_inclusive.

Without ``--taxes`` the seed's customers carry the legacy bare ``tax_rate`` 0.2: one
anonymous exclusive rate of 20 %, checked the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import insert, text

from schemas.taxes import TaxRateSpec
from storage.db import Sessions
from storage.invoicing.tax_models import TaxRateRow
from workers.invoicing import pricing

FLAT_FEE = 1000  # cents: the seed plan's flat price of 10 USD


@dataclass(frozen=True)
class RateDef:
    """A rate as the bench expects it on an invoice."""

    id: str | None  # the version; None for the bare ``tax_rate``
    name: str
    percentage: Fraction  # 19 is 19 %
    factor: Fraction = Fraction(1)
    inclusive: bool = False


BARE = RateDef(None, "tax", Fraction(20))  # billing_seed's customers: tax_rate 0.2
VAT = RateDef("vat-2031", "vat", Fraction(19))
PPN = RateDef("ppn-2031", "ppn", Fraction(12), Fraction(11, 12))
VAT_INCL = RateDef("vat-incl-2031", "vat_incl", Fraction(19), inclusive=True)
PPN_INCL = RateDef("ppn-incl-2031", "ppn_incl", Fraction(12), Fraction(11, 12), True)
EXCLUSIVE = (VAT, PPN)
INCLUSIVE = (VAT_INCL, PPN_INCL)


def versions(anchor: datetime) -> list[TaxRateSpec]:
    """Two versions of each rate name: the one in force from ``anchor`` (the seeded period's
    start), which every invoice must use, and an older one that ended at ``anchor`` with
    other figures (VAT 16 %, PPN 11 % on the whole price), which none may."""
    before = anchor - timedelta(days=365)
    out: list[TaxRateSpec] = []
    for r, country, display in (
        (VAT, "DE", "VAT"),
        (PPN, "ID", "PPN"),
        (VAT_INCL, "DE", "VAT (incl.)"),
        (PPN_INCL, "ID", "PPN (incl.)"),
    ):
        assert r.id is not None
        common = {"name": r.name, "display_name": display, "country": country,
                  "inclusive": r.inclusive}  # fmt: skip
        out.append(
            TaxRateSpec.model_validate(
                common | {"id": r.id.replace("2031", "2030"), "effective_from": before,
                          "effective_until": anchor,
                          "percentage": "16" if r.name.startswith("vat") else "11"}
            )
        )  # fmt: skip
        out.append(
            TaxRateSpec.model_validate(
                common | {"id": r.id, "effective_from": anchor,
                          "percentage": str(r.percentage),
                          "taxable_base_factor": f"{r.factor.numerator}/{r.factor.denominator}"}
            )
        )  # fmt: skip
    return out


def inclusive_customers(n: int, share: Fraction) -> set[int]:
    """The customers (indices) that name the inclusive rates: ``share`` of ``n``, spread
    evenly (the others name the exclusive ones)."""
    return {i for i in range(n) if (i + 1) * share // 1 > i * share // 1}


async def seed_taxes(sessions: Sessions, tenant: str, anchor: datetime, inclusive: set[int]) -> int:
    """The rate versions of ``versions(anchor)`` as ``tax_rates`` rows (what
    ``CreateTaxRate`` writes), and on every customer ``c<i>`` of ``billing_seed.seed``
    ``tax_rates`` ["vat", "ppn"] (["vat_incl", "ppn_incl"] for ``i`` in ``inclusive``)
    instead of its bare ``tax_rate``. Returns how many versions."""
    rows = [{"tenant_id": tenant, **v.model_dump()} for v in versions(anchor)]
    incl = [f"c{i}" for i in sorted(inclusive)]
    async with sessions() as session, session.begin():
        await session.execute(insert(TaxRateRow), rows)
        for names, where in (
            (EXCLUSIVE, "NOT (external_id = ANY(:incl))"),
            (INCLUSIVE, "external_id = ANY(:incl)"),
        ):
            await session.execute(
                text(
                    "UPDATE customers SET tax_rate = NULL, tax_rates = CAST(:names AS jsonb) "
                    f"WHERE tenant_id = :t AND {where}"
                ),
                {"t": tenant, "incl": incl, "names": _json([r.name for r in names])},
            )
    return len(rows)


def _json(names: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{n}"' for n in names) + "]"


@dataclass(frozen=True)
class RateTax:
    """One rate's share of an invoice or a line."""

    rate: RateDef
    taxable_amount: int
    taxable_base: int
    tax: int


@dataclass(frozen=True)
class Expected:
    """Customer ``c<i>``'s invoice by hand, before prepaid credits."""

    lines: tuple[int, ...]  # the charge lines' amounts: the flat fee, the calls
    taxes: tuple[RateTax, ...]  # per rate, in the order the customer names them
    line_taxes: tuple[tuple[int, ...], ...] | None = None  # inclusive: per line, per rate

    @property
    def subtotal(self) -> int:
        return sum(self.lines)

    @property
    def tax(self) -> int:
        return sum(t.tax for t in self.taxes)

    @property
    def tax_inclusive(self) -> int:
        return sum(t.tax for t in self.taxes if t.rate.inclusive)

    @property
    def total(self) -> int:
        return self.subtotal + self.tax - self.tax_inclusive


def charge_lines(i: int) -> tuple[int, ...]:
    """``c<i>``'s lines for the seeded period (cents): 10.00 flat, and 0.001 a call over the
    100 included of its ``i % 500 + 1`` calls, rounded once."""
    calls = max(i % 500 + 1 - 100, 0)
    return FLAT_FEE, pricing.to_minor(Decimal("0.001") * calls, "USD")


def expected(i: int, rates: Sequence[RateDef], lines: tuple[int, ...] | None = None) -> Expected:
    """``c<i>``'s invoice taxed at ``rates`` (all exclusive or all inclusive), rounded once
    per rate (per set if inclusive), half-even (``round`` of a Fraction); ``lines``: its
    charge lines (cents) when not the seed plan's ``charge_lines(i)``."""
    lines = charge_lines(i) if lines is None else lines
    amount = sum(lines)
    if rates and rates[0].inclusive:
        # the set's tax, rounded once, to the lines by amount, then each line's to its
        # rates by p x f (largest remainder both times)
        weights = [r.percentage / 100 * r.factor for r in rates]
        e = sum(weights)
        whole = round(amount * e / (1 + e))
        line_taxes = tuple(
            tuple(_largest_remainder(share, weights))
            for share in _largest_remainder(whole, [Fraction(a) for a in lines])
        )
        taxes = [sum(lt[k] for lt in line_taxes) for k in range(len(rates))]
        net = amount - whole
        out = [RateTax(r, net, round(net * r.factor), t) for r, t in zip(rates, taxes, strict=True)]
        return Expected(lines, tuple(out), line_taxes)
    else:
        out = []
        for r in rates:
            base = round(amount * r.factor)
            out.append(RateTax(r, amount, base, round(base * r.percentage / 100)))
    return Expected(lines, tuple(out))


def _largest_remainder(total: int, weights: Sequence[Fraction]) -> list[int]:
    """``total`` in proportion to ``weights``: floors, and one more to the largest
    remainders (ties to the first)."""
    whole = sum(weights)
    exact = [total * w / whole if whole else Fraction(0) for w in weights]
    parts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda k: (-(exact[k] - parts[k]), k))
    for k in by_remainder[: total - sum(parts)]:
        parts[k] += 1
    return parts


def _between(part: int, whole: int, weight: int, weights: int) -> bool:
    """``part`` is ``whole x weight / weights`` rounded down or up."""
    exact = Fraction(whole * weight, weights) if weights else Fraction(0)
    return exact.numerator // exact.denominator <= part <= -(-exact.numerator // exact.denominator)


def check_invoice(
    who: str,
    want: Expected,
    breakdown: Sequence[Mapping[str, Any]],
    lines: Sequence[tuple[int, Sequence[Mapping[str, Any]]]],
) -> str | None:
    """The problem with an invoice's ``tax_breakdown`` and its charge ``lines`` (amount,
    ``taxes``, by position), or None: the breakdown is the rates by hand, rate by rate
    (version, taxable amount, base, tax), every line carries each rate once, its share
    of the tax and base is its exact share rounded down or up, its taxable amount its
    amount (less its share of inclusive taxes), and the lines add up to the breakdown."""
    got = [
        (b["tax_rate_id"], b["name"], b["inclusive"], b["taxable_amount"], b["taxable_base"],
         b["tax"], b["taxability"], Fraction(b["taxable_base_factor"]),
         Fraction(Decimal(b["percentage"])))
        for b in breakdown
    ]  # fmt: skip
    hand = [
        (t.rate.id, t.rate.name, t.rate.inclusive, t.taxable_amount, t.taxable_base, t.tax,
         "taxable", t.rate.factor, t.rate.percentage)
        for t in want.taxes
    ]  # fmt: skip
    if got != hand:
        return f"{who}: tax_breakdown {got} != by hand {hand}"
    amounts = tuple(a for a, _ in lines)
    if amounts != want.lines:
        return f"{who}: charge lines {amounts} != by hand {want.lines}"
    sums = {t.rate.name: [0, 0, 0] for t in want.taxes}
    for position, (amount, taxes) in enumerate(lines):
        if [t["name"] for t in taxes] != [t.rate.name for t in want.taxes]:
            return f"{who}: line {position} taxed by {[t['name'] for t in taxes]}"
        incl = sum(t["tax"] for t in taxes if t["inclusive"])
        for t, w in zip(taxes, want.taxes, strict=True):
            if t["tax_rate_id"] != w.rate.id or t["taxable_amount"] != amount - incl:
                return f"{who}: line {position} {t} (amount {amount})"
            if want.line_taxes is not None:
                k = [x.rate.name for x in want.taxes].index(w.rate.name)
                tax_ok = t["tax"] == want.line_taxes[position][k]
            else:
                tax_ok = _between(t["tax"], w.tax, amount, want.subtotal)
            if not (tax_ok and _between(t["taxable_base"], w.taxable_base, amount, want.subtotal)):
                return f"{who}: line {position}'s share {t} of {w} is not in proportion"
            s = sums[w.rate.name]
            s[0], s[1], s[2] = s[0] + t["taxable_amount"], s[1] + t["taxable_base"], s[2] + t["tax"]
    for w in want.taxes:
        if sums[w.rate.name] != [w.taxable_amount, w.taxable_base, w.tax]:
            return f"{who}: the lines' {w.rate.name} {sums[w.rate.name]} != the invoice's {w}"
    return None
