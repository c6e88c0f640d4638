"""Credit notes' arithmetic (pure: no I/O). docs/credit-notes.md states each rule with a
worked example.

- What remains creditable of an invoice line: its amount net of its discount lines, minus
  the lines of earlier notes (not void) on it. Of the invoice: ``total + credits`` (what it
  charged, before prepaid credits paid part of it) minus the totals of earlier notes.
- An invoice with a tax breakdown (every invoice finalized since taxes, docs/taxes.md)
  reverses its taxes rate by rate:

  - a note by lines reverses each rate of a line in proportion to the part of the line it
    credits (``round(line's tax x amount / line's amount)``, once per rate, with the
    invoice's rounding), never more than is left of that rate on the line, nor of that rate
    on the invoice; the note that credits the rest of a line reverses exactly the rest of
    each rate's tax, taxable amount and base. An amount asked of a line with inclusive
    rates is its gross (tax included, as the line shows it); otherwise it excludes tax;
  - a note by amount (tax included) reverses each rate of the invoice's breakdown in
    proportion to the part of what the invoice charged that it credits, never more than is
    left of the rate, and exactly the rest when it credits everything left.

- An invoice without one (before taxes) keeps the rules it was issued under: by lines, tax
  once per note at each rate (a line's own, else the invoice's), rounded once; by amount,
  ``tax = amount * rate / (1 + rate)`` at the invoice's rate, rounded once.
- Either way, the tax is cut so that the note's total never exceeds what remains of the
  invoice.
- Its outcome, in this order: the amount due is reduced; then prepaid credits that paid the
  invoice return to their grants; the rest (paid in cash) is refunded or granted to the
  customer's balance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

from schemas.taxes import TaxAmount, parse_factor
from workers.invoicing.errors import Conflict, NotFound
from workers.invoicing.service import DISCOUNT, ROUNDING, taxed
from workers.invoicing.taxes import Rate, apportion, round_fraction
from workers.invoicing.taxes import TaxAmount as Taxed

TAXABLE = "taxable"
Key = tuple[Any, ...]  # a rate of a breakdown: every field of a TaxAmount but its amounts


def key(t: TaxAmount) -> Key:
    return (t.tax_rate_id, t.name, t.display_name, t.percentage, t.inclusive, t.country,
            t.jurisdiction, t.taxable_base_factor, t.taxability)  # fmt: skip


@dataclass(frozen=True)
class ChargeLine:
    """An invoice line as a note sees it."""

    position: int
    description: str
    amount: int
    kind: str
    grant_id: str | None = None
    tax_rate: Decimal | None = None
    applies_to: int | None = None
    taxes: tuple[TaxAmount, ...] = ()  # per rate, as finalized (empty before taxes)

    @property
    def inclusive(self) -> bool:
        return any(t.inclusive for t in self.taxes)


@dataclass(frozen=True)
class NoteLine:
    line: int | None  # the invoice line's position; None: a note by amount
    description: str
    amount: int  # excluding tax
    tax_rate: Decimal | None
    tax: int
    taxes: tuple[TaxAmount, ...] = ()  # per rate, positive: as credited

    @property
    def line_amount(self) -> int:
        """What it takes off its invoice line: ``amount``, plus the tax for a line with
        inclusive rates (whose amount is gross)."""
        return self.amount + sum(t.tax for t in self.taxes if t.inclusive)


@dataclass(frozen=True)
class Note:
    lines: tuple[NoteLine, ...]
    subtotal: int
    tax: int
    breakdown: tuple[TaxAmount, ...] = ()  # per rate, positive: as credited

    @property
    def total(self) -> int:
        return self.subtotal + self.tax


@dataclass(frozen=True)
class Outcome:
    reduce_due: int
    credits_returned: int
    refund: int
    to_balance: int


@dataclass(frozen=True)
class Sums:
    taxable_amount: int = 0
    taxable_base: int = 0
    tax: int = 0

    def __add__(self, t: Sums | TaxAmount) -> Sums:
        return Sums(self.taxable_amount + t.taxable_amount, self.taxable_base + t.taxable_base,
                    self.tax + t.tax)  # fmt: skip

    def __sub__(self, s: Sums) -> Sums:
        return Sums(self.taxable_amount - s.taxable_amount, self.taxable_base - s.taxable_base,
                    self.tax - s.tax)  # fmt: skip


ZERO = Sums()


@dataclass(frozen=True)
class Reversed:
    """What earlier notes (not void) reversed of each rate: per invoice line, and of the
    invoice (lines and amount notes alike)."""

    lines: Mapping[int, Mapping[Key, Sums]] = field(default_factory=dict)
    invoice: Mapping[Key, Sums] = field(default_factory=dict)

    @classmethod
    def of(cls, note_lines: Iterable[tuple[int | None, Sequence[TaxAmount]]]) -> Reversed:
        """From the (invoice line, taxes) of earlier notes' lines."""
        lines: dict[int, dict[Key, Sums]] = {}
        invoice: dict[Key, Sums] = {}
        for position, taxes in note_lines:
            for t in taxes:
                k = key(t)
                invoice[k] = invoice.get(k, ZERO) + t
                if position is not None:
                    on = lines.setdefault(position, {})
                    on[k] = on.get(k, ZERO) + t
        return cls(lines, invoice)

    def on(self, position: int, t: TaxAmount) -> Sums:
        return self.lines.get(position, {}).get(key(t), ZERO)


NOTHING = Reversed()


def is_charge(line: ChargeLine) -> bool:
    return line.grant_id is None and line.kind != DISCOUNT


def creditable(lines: Sequence[ChargeLine], credited: dict[int, int]) -> dict[int, int]:
    """What remains creditable of each charge line (by position): its amount plus its
    (negative) discount lines, minus ``credited`` (earlier notes' amounts on it), at least 0."""
    net = {ln.position: ln.amount for ln in lines if is_charge(ln)}
    for ln in lines:
        if ln.kind == DISCOUNT and ln.grant_id is None and ln.applies_to in net:
            net[ln.applies_to] += ln.amount
    return {p: max(a - credited.get(p, 0), 0) for p, a in net.items()}


def _shares(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder; exact sum)."""
    whole = sum(weights)
    if whole <= 0 or total == 0:
        return [0] * len(weights)
    parts = [total * w // whole for w in weights]
    rest = total - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[:rest]:
        parts[i] += 1
    return parts


def part(of: int, before: int, amount: int, whole: int, rest: bool, mode: str) -> int:
    """The share of ``of`` that crediting ``amount`` of ``whole`` reverses, when ``before``
    was reversed already: ``round(of x amount / whole)`` (``mode``), at most what is left
    (``of - before``), and exactly that when the note credits the ``rest``."""
    left = of - before
    if rest:
        return left
    share = round_fraction(Fraction(of * amount, whole), mode)
    low, high = sorted((0, left))
    return min(max(share, low), high)


def _check(requested: Sequence[tuple[int, int]], left: dict[int, int], remaining: int) -> None:
    for i, (position, amount) in enumerate(requested):
        if position not in left:
            raise NotFound(
                f"the invoice has no charge line at position {position}", field=f"lines[{i}].line"
            )
        if amount > left[position]:
            raise Conflict(
                f"line {position} has {left[position]} minor units left to credit; {amount} asked",
                field=f"lines[{i}].amount",
            )
    asked = sum(a for _, a in requested)
    if asked > remaining:
        raise Conflict(
            f"the invoice has {remaining} minor units left to credit; the lines come to "
            f"{asked} before tax",
            field="lines",
        )


def by_lines(
    requested: Sequence[tuple[int, int]],
    lines: Sequence[ChargeLine],
    credited: dict[int, int],
    invoice_rate: Decimal | None,
    currency: str,
    rounding: str,
    remaining: int,
    *,
    breakdown: Sequence[TaxAmount] = (),
    earlier: Reversed = NOTHING,
) -> Note:
    """A note of ``requested`` (invoice line position, amount: excluding tax, or its gross
    for a line with inclusive rates). ``credited``: what earlier notes took off each line;
    ``breakdown``: the invoice's (none: the rules before taxes); ``earlier``: what earlier
    notes reversed of each rate."""
    left = creditable(lines, credited)
    _check(requested, left, remaining)
    if breakdown:
        return _itemized(requested, lines, credited, rounding, remaining, breakdown, earlier)
    by_position = {ln.position: ln for ln in lines}
    rates: list[Decimal | None] = []
    for position, _ in requested:
        own = by_position[position].tax_rate
        rates.append(own if own is not None else invoice_rate)
    subtotal = sum(a for _, a in requested)
    taxes = [0] * len(requested)
    for rate in dict.fromkeys(rates):
        idx = [i for i, r in enumerate(rates) if r == rate]
        base = sum(requested[i][1] for i in idx)
        for i, t in zip(
            idx,
            _shares(taxed(base, rate, currency, rounding), [requested[i][1] for i in idx]),
            strict=True,
        ):
            taxes[i] = t
    tax = sum(taxes)
    if subtotal + tax > remaining:  # the cap: never more than what remains of the invoice
        taxes = _shares(remaining - subtotal, taxes)
        tax = remaining - subtotal
    out = tuple(
        NoteLine(p, by_position[p].description, a, rates[i], taxes[i],
                 bare(rates[i], a, taxes[i]))
        for i, (p, a) in enumerate(requested)
    )  # fmt: skip
    return Note(out, subtotal, tax, summed(out))


def _itemized(
    requested: Sequence[tuple[int, int]],
    lines: Sequence[ChargeLine],
    credited: dict[int, int],
    rounding: str,
    remaining: int,
    breakdown: Sequence[TaxAmount],
    earlier: Reversed,
) -> Note:
    """``by_lines`` on an invoice with a breakdown: each line's rates, reversed exactly."""
    mode = ROUNDING[rounding]
    whole = creditable(lines, {})
    by_position = {ln.position: ln for ln in lines}
    # per requested line, per rate: [taxable_amount, taxable_base, tax]; and for a line
    # with inclusive rates, the gross (net + tax) its taxable amount is taken from
    shares: list[list[list[int]]] = []
    grosses: list[int] = []
    for position, amount in requested:
        ln, of = by_position[position], whole[position]
        rest = amount == of - credited.get(position, 0)
        before = [earlier.on(position, t) for t in ln.taxes]
        shares.append([
            [part(t.taxable_amount, b.taxable_amount, amount, of, rest, mode),
             part(t.taxable_base, b.taxable_base, amount, of, rest, mode),
             part(t.tax, b.tax, amount, of, rest, mode)]
            for t, b in zip(ln.taxes, before, strict=True)
        ])  # fmt: skip
        gross = 0
        if ln.inclusive:
            line_gross = ln.taxes[0].taxable_amount + sum(t.tax for t in ln.taxes)
            gross_before = before[0].taxable_amount + sum(b.tax for b in before)
            gross = part(line_gross, gross_before, amount, of, rest, mode)
            if not rest:  # tax included: at most the amount, and never less than the rest
                _cut(shares[-1], amount)  # of the line leaves room for
                unreversed = [t.tax - b.tax for t, b in zip(ln.taxes, before, strict=True)]
                _enough(shares[-1], unreversed, of - credited.get(position, 0) - amount)
        grosses.append(gross)
    # never more of a rate than the invoice has left of it (after earlier notes by amount)
    entries: dict[Key, list[list[int]]] = {}
    for i, (position, _) in enumerate(requested):
        for j, t in enumerate(by_position[position].taxes):
            entries.setdefault(key(t), []).append(shares[i][j])
    left = {key(t): ZERO + t - earlier.invoice.get(key(t), ZERO) for t in breakdown}
    for k, of_rate in entries.items():
        if k in left:
            _cut(of_rate, left[k].tax)
    # the cap: never more than what remains of the invoice (only tax added on top counts)
    asked = sum(a for _, a in requested)
    added = [s for i, (p, _) in enumerate(requested) if not by_position[p].inclusive
             for s in shares[i]]  # fmt: skip
    _cut(added, remaining - asked)
    for i, (position, _) in enumerate(requested):
        if by_position[position].inclusive:  # the net: the gross less the tax
            tax = sum(s[2] for s in shares[i])
            for s in shares[i]:
                s[0] = grosses[i] - tax
    for k, of_rate in entries.items():
        if k in left:
            _cut(of_rate, left[k].taxable_amount, 0)
            _cut(of_rate, left[k].taxable_base, 1)
    out: list[NoteLine] = []
    for i, (position, amount) in enumerate(requested):
        ln = by_position[position]
        taxes = tuple(amounts(t, Sums(*s)) for t, s in zip(ln.taxes, shares[i], strict=True))
        tax = sum(t.tax for t in taxes)
        net = amount - tax if ln.inclusive else amount
        out.append(NoteLine(position, ln.description, net, rate_of(taxes), tax, taxes))
    subtotal = sum(n.amount for n in out)
    return Note(tuple(out), subtotal, sum(n.tax for n in out), summed(out))


def _cut(shares: Sequence[list[int]], at_most: int, at: int = 2) -> None:
    """Cut the figure ``at`` (0 taxable amount, 1 base, 2 tax) of ``shares`` (in place) so
    that they sum to at most ``at_most``, in proportion to themselves."""
    if sum(s[at] for s in shares) <= at_most:
        return
    weights = [max(s[at], 0) for s in shares]
    for s, t in zip(shares, apportion(max(at_most, 0), weights), strict=True):
        s[at] = t


def _enough(shares: Sequence[list[int]], left: Sequence[int], room: int) -> None:
    """Raise the taxes of ``shares`` (in place, each at most its ``left``) so that what is
    left of them after the note fits in the ``room`` left to credit: the note that credits
    the rest can always reverse the rest of the tax."""
    over = sum(a - s[2] for a, s in zip(left, shares, strict=True)) - room
    for a, s in zip(left, shares, strict=True):
        more = min(over, a - s[2])
        if more > 0:
            s[2] += more
            over -= more


def tax_included(amount: int, rate: Decimal | None, rounding: str) -> int:
    """The tax inside ``amount`` (tax included) at ``rate``: ``amount * rate / (1 + rate)``,
    rounded once to minor units."""
    if rate is None or rate == 0:
        return 0
    with localcontext() as ctx:
        ctx.prec = 60
        exact = Decimal(amount) * rate / (1 + rate)
        return int(exact.quantize(Decimal(1), rounding=ROUNDING[rounding]))


def by_amount(
    amount: int,
    invoice_rate: Decimal | None,
    rounding: str,
    remaining: int,
    description: str,
    *,
    breakdown: Sequence[TaxAmount] = (),
    charged: int = 0,
    earlier: Reversed = NOTHING,
) -> Note:
    """A note of ``amount`` (tax included): split across the invoice's ``breakdown`` in
    proportion to ``amount / charged`` (what the invoice charged: ``total + credits``), or
    at the invoice's rate when it has none."""
    if amount > remaining:
        raise Conflict(
            f"the invoice has {remaining} minor units left to credit; {amount} asked",
            field="amount",
        )
    if not breakdown:
        tax = tax_included(amount, invoice_rate, rounding)
        line = NoteLine(None, description, amount - tax, invoice_rate, tax,
                        bare(invoice_rate, amount - tax, tax))  # fmt: skip
        return Note((line,), amount - tax, tax, line.taxes)
    mode, rest = ROUNDING[rounding], amount == remaining
    shares: list[list[int]] = []
    for t in breakdown:
        b = earlier.invoice.get(key(t), ZERO)
        shares.append([part(t.taxable_amount, b.taxable_amount, amount, charged, rest, mode),
                       part(t.taxable_base, b.taxable_base, amount, charged, rest, mode),
                       part(t.tax, b.tax, amount, charged, rest, mode)])  # fmt: skip
    if not rest:
        _cut(shares, amount)
        left = [t.tax - earlier.invoice.get(key(t), ZERO).tax for t in breakdown]
        _enough(shares, left, remaining - amount)
    taxes = tuple(amounts(t, Sums(*s)) for t, s in zip(breakdown, shares, strict=True))
    tax = sum(t.tax for t in taxes)
    line = NoteLine(None, description, amount - tax, rate_of(taxes), tax, taxes)
    return Note((line,), amount - tax, tax, summed((line,)))


def bare(rate: Decimal | None, amount: int, tax: int) -> tuple[TaxAmount, ...]:
    """The breakdown of a note line taxed at a bare rate (an invoice before taxes)."""
    if rate is None:
        return ()
    return (Taxed(Rate.bare(rate), amount, amount, tax).model(),)


def rate_of(taxes: Sequence[TaxAmount]) -> Decimal | None:
    """A note line's ``tax_rate``: its one taxable rate as a fraction (PPN's 12 % of 11/12
    is 0.11) when that is an exact decimal; else None."""
    if len(taxes) != 1 or taxes[0].taxability != TAXABLE:
        return None
    t = taxes[0]
    f = Fraction(t.percentage) / 100 * parse_factor(t.taxable_base_factor)
    d = f.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return None
    with localcontext() as ctx:
        ctx.prec = 60
        return Decimal(f.numerator) / Decimal(f.denominator)


def amounts(t: TaxAmount, s: Sums) -> TaxAmount:
    """``t`` with the amounts of ``s``."""
    update = {"taxable_amount": s.taxable_amount, "taxable_base": s.taxable_base, "tax": s.tax}
    return t.model_copy(update=update)


def summed(lines: Iterable[NoteLine]) -> tuple[TaxAmount, ...]:
    """The note's breakdown: its lines' taxes summed per rate, in order of appearance."""
    out: dict[Key, TaxAmount] = {}
    for ln in lines:
        for t in ln.taxes:
            k = key(t)
            out[k] = amounts(t, ZERO + out[k] + t) if k in out else t
    return tuple(out.values())


def outcome(total: int, amount_due: int, credits_left: int, cash_left: int, settle: str) -> Outcome:
    """How a note of ``total`` settles: the amount due first, then the prepaid credits that
    paid the invoice go back, then cash (refunded or granted to the balance)."""
    reduce_due = min(total, max(amount_due, 0))
    rest = total - reduce_due
    returned = min(rest, max(credits_left, 0))
    cash = rest - returned
    if cash > max(cash_left, 0):
        raise Conflict(
            f"only {max(cash_left, 0)} minor units paid in cash are left to give back; "
            f"{cash} would be",
            field="settle",
        )
    refund = cash if settle == "refund" else 0
    return Outcome(reduce_due, returned, refund, cash - refund)


def take_back(available: Sequence[tuple[str, int]], amount: int) -> list[tuple[str, int]]:
    """``amount`` returned to the grants that paid the invoice, each at most what it paid
    and has not had back (in the order given: the order they were applied)."""
    out: list[tuple[str, int]] = []
    for grant_id, left in available:
        if amount <= 0:
            break
        take = min(left, amount)
        if take > 0:
            out.append((grant_id, take))
            amount -= take
    return out
