"""Reversals and restorations of commissions, pure (the rules are in service.py's
docstring and docs/partners.md): state-based, so the ledger of an invoice is always what
its live causes make it, whatever order they came in. Fractions round half to even
(``round``), once per entry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from schemas.partners import Cause


@dataclass(frozen=True)
class Reduction:
    """A credit note or refund of the invoice, as kept."""

    cause: Cause  # "credit_note" | "refund"
    cause_id: str
    amount: int  # refund: its amount; credit note: refund_amount + amount_credited_to_balance
    subtotal: int = 0  # credit note only
    total: int = 0  # credit note only


def net_part(reduction: Reduction, net: int, total: int) -> Fraction:
    """The net (ex-tax) part of the paid amount a credit note or refund takes back."""
    if reduction.cause == "credit_note":
        if reduction.total <= 0:
            return Fraction(0)
        return Fraction(reduction.amount * reduction.subtotal, reduction.total)
    if total <= 0:
        return Fraction(0)
    return Fraction(reduction.amount * net, total)


def target(a0: int, k0: Fraction, kept: Fraction) -> int:
    """What of ``a0`` stays accrued when ``kept`` of ``k0`` is kept (one rounding)."""
    if k0 <= 0:
        return 0
    return round(a0 * max(kept, Fraction(0)) / k0)


@dataclass(frozen=True)
class Reversal:
    rule: str
    reduction: Reduction
    amount: int  # > 0
    kept: Fraction  # K after this cause


def reversals(
    accruals: Mapping[str, tuple[int, int]],
    k0: Fraction,
    net: int,
    total: int,
    applied: Sequence[Reduction],
    new: Sequence[Reduction],
) -> tuple[list[Reversal], dict[str, int]]:
    """The reversals ``new`` causes make, one per rule and cause, in order.

    ``accruals``: rule → (a0, reversed so far); ``applied``: the causes counted before.
    Returns the reversals and each rule's reversed sum after them."""
    kept = k0 - sum((net_part(r, net, total) for r in applied), Fraction(0))
    done = {rule: rev for rule, (_, rev) in accruals.items()}
    out: list[Reversal] = []
    for reduction in new:
        kept -= net_part(reduction, net, total)
        for rule, (a0, _) in sorted(accruals.items()):
            step = (a0 - done[rule]) - target(a0, k0, kept)
            if step > 0:
                out.append(Reversal(rule, reduction, step, kept))
                done[rule] += step
    return out, done


@dataclass(frozen=True)
class Restoration:
    rule: str
    voided: Reduction  # the voided credit note
    amount: int  # > 0: what accrues again
    kept: Fraction  # K of the causes still live


def restorations(
    accruals: Mapping[str, tuple[int, int]],
    k0: Fraction,
    net: int,
    total: int,
    remaining: Sequence[Reduction],
    voided: Reduction,
) -> tuple[list[Restoration], dict[str, int]]:
    """What a voided cause gives back, one restoration per rule.

    ``accruals``: rule → (a0, reversed so far); ``remaining``: the causes still counted
    (``voided`` no longer among them). Each rule's reversed total should be
    a0 - target(a0, k0, K of ``remaining``); what was reversed above that is restored.
    Returns the restorations and each rule's reversed sum after them."""
    kept = k0 - sum((net_part(r, net, total) for r in remaining), Fraction(0))
    done = {rule: rev for rule, (_, rev) in accruals.items()}
    out: list[Restoration] = []
    for rule, (a0, rev) in sorted(accruals.items()):
        should = a0 - target(a0, k0, kept)
        if rev > should:
            out.append(Restoration(rule, voided, rev - should, kept))
            done[rule] = should
    return out, done
