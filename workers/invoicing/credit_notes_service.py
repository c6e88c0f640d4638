"""Credit notes' arithmetic (pure: no I/O). docs/credit-notes.md states each rule with a
worked example.

- What remains creditable of an invoice line: its amount net of its discount lines, minus
  the lines of earlier notes (not void) on it. Of the invoice: ``total + credits`` (what it
  charged, before prepaid credits paid part of it) minus the totals of earlier notes.
- A note by lines: each line at most what remains of it; tax once per note at each rate (a
  line's own, else the invoice's), rounded once with the invoice's rounding; the tax is cut
  so that the note's total never exceeds what remains of the invoice.
- A note by amount (tax included): ``tax = amount * rate / (1 + rate)`` rounded once with the
  invoice's rounding at the invoice's rate, ``net = amount - tax``.
- Its outcome, in this order: the amount due is reduced; then prepaid credits that paid the
  invoice return to their grants; the rest (paid in cash) is refunded or granted to the
  customer's balance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext

from workers.invoicing.errors import Conflict, NotFound
from workers.invoicing.service import DISCOUNT, ROUNDING, taxed


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


@dataclass(frozen=True)
class NoteLine:
    line: int | None  # the invoice line's position; None: a note by amount
    description: str
    amount: int  # excluding tax
    tax_rate: Decimal | None
    tax: int


@dataclass(frozen=True)
class Note:
    lines: tuple[NoteLine, ...]
    subtotal: int
    tax: int

    @property
    def total(self) -> int:
        return self.subtotal + self.tax


@dataclass(frozen=True)
class Outcome:
    reduce_due: int
    credits_returned: int
    refund: int
    to_balance: int


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


def by_lines(
    requested: Sequence[tuple[int, int]],
    lines: Sequence[ChargeLine],
    credited: dict[int, int],
    invoice_rate: Decimal | None,
    currency: str,
    rounding: str,
    remaining: int,
) -> Note:
    """A note of ``requested`` (invoice line position, amount excluding tax)."""
    left = creditable(lines, credited)
    by_position = {ln.position: ln for ln in lines}
    rates: list[Decimal | None] = []
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
        own = by_position[position].tax_rate
        rates.append(own if own is not None else invoice_rate)
    subtotal = sum(a for _, a in requested)
    if subtotal > remaining:
        raise Conflict(
            f"the invoice has {remaining} minor units left to credit; the lines come to "
            f"{subtotal} before tax",
            field="lines",
        )
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
        NoteLine(p, by_position[p].description, a, rates[i], taxes[i])
        for i, (p, a) in enumerate(requested)
    )
    return Note(out, subtotal, tax)


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
) -> Note:
    """A note of ``amount`` (tax included), split at the invoice's rate."""
    if amount > remaining:
        raise Conflict(
            f"the invoice has {remaining} minor units left to credit; {amount} asked",
            field="amount",
        )
    tax = tax_included(amount, invoice_rate, rounding)
    line = NoteLine(None, description, amount - tax, invoice_rate, tax)
    return Note((line,), amount - tax, tax)


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
