"""The commission math, pure (docs/partners.md): exact ``Fraction`` arithmetic and ONE
rounding per ledger line, half-even, to integer minor units.

For an attributed invoice X paid in currency C:

* N = X.total - X.tax: what was paid for, net of tax, discounts and credits (total =
  subtotal - discount - credits + tax - tax_inclusive). No commission when X.total <= 0 or
  N <= 0.
* K0 = N * X.amount_paid / X.total: the paid net (a credit note that reduced the amount due
  before payment is already out of amount_paid).
* The charge lines (not discount lines, not credit lines) are matched to the most specific
  rule of the partner's tier that applies to C: a product rule naming the line's price key,
  else a plan rule naming the invoice's plan, else the tier's default rule. Each rule's base
  is K0 * (Σ its lines) / (Σ every charge line); with no charge amount at all, K0 goes to
  the default rule.
* percent: p * base; fixed: the amount, once per invoice; tiered: Σ_i p_i * |[V0, V0 + base)
  ∩ [lo_i, up_to_i)| where V0 is the partner's paid volume (Σ K0) in the month and currency
  before this invoice. Then min(cap_per_invoice), min(cap_per_period - what the rule accrued
  for the partner in the month), never below 0, and one rounding.

A reversal is state-based: the net kept K = K0 - Σ the causes' net parts (a credit note's
refund and balance credit times its subtotal/total; a refund not made by a credit note times
N/total); the target is round(a0 * max(K, 0) / K0) and what was accrued above it is
reversed. A full refund reverses exactly a0; partial ones sum exactly to what they should.
A voided credit note is no longer counted: each accrual's reversed total goes back to
a0 - target(a0, K0, K of the causes still live), and what was reversed above that accrues
again (a restoration) — the same ledger as if the note had never been issued.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction

from schemas import topics
from schemas.envelope import CloudEvent
from schemas.invoicing import InvoiceData
from schemas.partners import (
    Cause,
    CommissionAccrued,
    CommissionData,
    CommissionPayoutRecorded,
    CommissionReversed,
    CommissionRuleSpec,
    CommissionStatementIssued,
    EntryKind,
    PayoutData,
    RuleKind,
    StatementData,
    StatementStatus,
    entry_id,
)
from workers.partners.reversals import Reduction as Reduction
from workers.partners.reversals import Restoration as Restoration
from workers.partners.reversals import Reversal as Reversal
from workers.partners.reversals import net_part as net_part
from workers.partners.reversals import restorations as restorations
from workers.partners.reversals import reversals as reversals
from workers.partners.reversals import target as target

SOURCE = "billstream/partners"
NOT_CHARGES = frozenset({"discount", "credit"})  # line kinds that are not charges


# --- exact numbers ------------------------------------------------------------------------


def round_half_even(value: Fraction) -> int:
    """``value`` rounded to an integer, ties to even (Fraction's own rounding)."""
    return round(value)


def exact_text(value: Fraction) -> str:
    """``value`` as text that parses back to it exactly: a decimal when it has a finite
    decimal form ('12345.5'), else a fraction ('10000/3')."""
    q = value.denominator
    twos = fives = 0
    while q % 2 == 0:
        q //= 2
        twos += 1
    while q % 5 == 0:
        q //= 5
        fives += 1
    if q != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    if places == 0:
        return str(value.numerator)
    scaled = value * 10**places
    assert scaled.denominator == 1
    digits = str(abs(scaled.numerator)).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def parse_exact(text: str) -> Fraction:
    return Fraction(text)


# --- rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    key: str
    kind: RuleKind
    plan: str | None = None
    product: str | None = None
    percent: Fraction | None = None
    amount: int | None = None
    tiers: tuple[tuple[int | None, Fraction], ...] = ()
    currency: str | None = None
    cap_per_invoice: int | None = None
    cap_per_period: int | None = None

    def applies_in(self, currency: str) -> bool:
        return self.currency is None or self.currency == currency

    @property
    def default(self) -> bool:
        return self.plan is None and self.product is None


def rule_of(spec: CommissionRuleSpec) -> Rule:
    return Rule(
        key=spec.key,
        kind=spec.kind,
        plan=spec.plan,
        product=spec.product,
        percent=None if spec.percent is None else Fraction(spec.percent),
        amount=spec.amount,
        tiers=tuple((t.up_to, Fraction(t.percent)) for t in spec.tiers or ()),
        currency=spec.currency,
        cap_per_invoice=spec.cap_per_invoice,
        cap_per_period=spec.cap_per_period,
    )


def pick(rules: Sequence[Rule], currency: str, price_key: str, plan: str | None) -> Rule | None:
    """The most specific rule for one charge line: product, else plan, else the default
    (ties: the smallest key)."""
    usable = sorted((r for r in rules if r.applies_in(currency)), key=lambda r: r.key)
    for r in usable:
        if r.product is not None and r.product == price_key:
            return r
    if plan is not None:
        for r in usable:
            if r.product is None and r.plan == plan:
                return r
    for r in usable:
        if r.default:
            return r
    return None


# --- the invoice ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PaidInvoice:
    """What of a paid invoice the commission is computed from."""

    invoice_id: str
    currency: str
    total: int
    tax: int
    amount_paid: int
    plan: str | None
    lines: tuple[tuple[str, int], ...]  # the charge lines: (price_key, amount)

    @property
    def net(self) -> int:
        return self.total - self.tax

    @property
    def paid_net(self) -> Fraction:
        """K0 (0 when the invoice earns nothing)."""
        if self.total <= 0 or self.net <= 0:
            return Fraction(0)
        return Fraction(self.net * self.amount_paid, self.total)


def paid_invoice(invoice: InvoiceData, plan: str | None) -> PaidInvoice:
    lines = tuple(
        (ln.price_key, ln.amount)
        for ln in invoice.lines
        if ln.grant_id is None and ln.discount_id is None and ln.kind not in NOT_CHARGES
    )
    return PaidInvoice(
        invoice_id=invoice.invoice_id,
        currency=invoice.currency,
        total=invoice.total,
        tax=invoice.tax,
        amount_paid=invoice.amount_paid,
        plan=plan,
        lines=lines,
    )


def bases(invoice: PaidInvoice, rules: Sequence[Rule]) -> dict[str, tuple[Rule, Fraction]]:
    """Each applicable rule's base: its lines' share of K0 (in rule key order)."""
    k0 = invoice.paid_net
    if k0 <= 0:
        return {}
    s = sum(amount for _, amount in invoice.lines)
    if s == 0:
        default = pick([r for r in rules if r.default], invoice.currency, "", None)
        return {} if default is None else {default.key: (default, k0)}
    shares: dict[str, tuple[Rule, int]] = {}
    for price_key, amount in invoice.lines:
        rule = pick(rules, invoice.currency, price_key, invoice.plan)
        if rule is not None:
            _, before = shares.get(rule.key, (rule, 0))
            shares[rule.key] = (rule, before + amount)
    return {k: (r, k0 * part / s) for k, (r, part) in sorted(shares.items())}


def tiered(tiers: Sequence[tuple[int | None, Fraction]], v0: Fraction, base: Fraction) -> Fraction:
    """Σ_i p_i * |[v0, v0 + base) ∩ [lo_i, up_to_i)|."""
    out = Fraction(0)
    lo = Fraction(0)
    end = v0 + base
    for up_to, percent in tiers:
        hi = end if up_to is None else Fraction(up_to)
        overlap = min(end, hi) - max(v0, lo)
        if overlap > 0:
            out += percent * overlap
        if up_to is None:
            break
        lo = Fraction(up_to)
    return out


def commission(rule: Rule, base: Fraction, v0: Fraction, accrued_in_period: int) -> Fraction:
    """The exact commission of ``rule`` on ``base`` (before the line's one rounding)."""
    if base <= 0:
        return Fraction(0)
    if rule.kind == "percent":
        assert rule.percent is not None
        c = rule.percent * base
    elif rule.kind == "fixed":
        assert rule.amount is not None
        c = Fraction(rule.amount)
    else:
        c = tiered(rule.tiers, v0, base)
    if rule.cap_per_invoice is not None:
        c = min(c, Fraction(rule.cap_per_invoice))
    if rule.cap_per_period is not None:
        c = min(c, Fraction(rule.cap_per_period - accrued_in_period))
    return max(c, Fraction(0))


@dataclass(frozen=True)
class Accrual:
    rule: Rule
    base: Fraction
    amount: int  # a0: rounded once; may be 0 (then no ledger line)


@dataclass(frozen=True)
class Accrued:
    k0: Fraction
    accruals: tuple[Accrual, ...]
    volume: Fraction  # the month's volume after this invoice
    accrued: dict[str, int]  # each rule's sum in the month after this invoice


def accrue(
    invoice: PaidInvoice,
    rules: Sequence[Rule],
    volume: Fraction,
    accrued: Mapping[str, int],
) -> Accrued:
    """The commissions of one paid invoice, given the partner's month before it."""
    k0 = invoice.paid_net
    sums = dict(accrued)
    out: list[Accrual] = []
    for key, (rule, base) in bases(invoice, rules).items():
        amount = round_half_even(commission(rule, base, volume, sums.get(key, 0)))
        out.append(Accrual(rule, base, amount))
        if amount:
            sums[key] = sums.get(key, 0) + amount
    return Accrued(k0, tuple(out), volume + k0 if k0 > 0 else volume, sums)


# --- statements and payouts -----------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    total: int
    payable: int
    status: StatementStatus


def statement_totals(signed: Iterable[int]) -> Totals:
    """A statement's total (its lines, signed, carried totals included), what is payable
    and its status: payable when positive, paid when zero (nothing owed), carried when
    negative (taken over by the partner's next statement in that currency)."""
    total = sum(signed)
    if total > 0:
        return Totals(total, total, "payable")
    return Totals(total, 0, "paid" if total == 0 else "carried")


def after_payout(payable: int, paid: int) -> StatementStatus:
    return "paid" if paid >= payable else "payable"


def statement_number(year: int, n: int) -> str:
    return f"CS-{year:04d}-{n:06d}"


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryFacts:
    """What every ledger entry of one invoice shares."""

    tenant_id: str
    partner_id: str
    customer: str
    invoice_id: str
    invoice_number: str | None
    currency: str
    period: str
    extra: dict[str, str] = field(default_factory=dict)


def accrual_data(facts: EntryFacts, a: Accrual, effective_at: datetime) -> CommissionData:
    return CommissionData(
        entry_id=entry_id(facts.tenant_id, "accrued", facts.invoice_id, a.rule.key),
        kind="accrued",
        partner_id=facts.partner_id,
        customer=facts.customer,
        invoice_id=facts.invoice_id,
        invoice_number=facts.invoice_number,
        rule=a.rule.key,
        rule_kind=a.rule.kind,
        currency=facts.currency,
        base_minor=exact_text(a.base),
        amount=a.amount,
        period=facts.period,
        effective_at=effective_at,
        cause="invoice_paid",
        cause_id=facts.invoice_id,
    )


def _taking_back(
    facts: EntryFacts,
    kind: EntryKind,
    cause: Cause,
    cause_id: str,
    rule: str,
    rule_kind: RuleKind,
    kept: Fraction,
    amount: int,
    effective_at: datetime,
) -> CommissionData:
    """An entry that changes what an accrual keeps: a reversal or a restoration."""
    return CommissionData(
        entry_id=entry_id(facts.tenant_id, kind, facts.invoice_id, rule, cause, cause_id),
        kind=kind,
        partner_id=facts.partner_id,
        customer=facts.customer,
        invoice_id=facts.invoice_id,
        invoice_number=facts.invoice_number,
        rule=rule,
        rule_kind=rule_kind,
        currency=facts.currency,
        base_minor=exact_text(max(kept, Fraction(0))),
        amount=amount,
        period=facts.period,
        effective_at=effective_at,
        cause=cause,
        cause_id=cause_id,
        accrual_id=entry_id(facts.tenant_id, "accrued", facts.invoice_id, rule),
    )


def reversal_data(
    facts: EntryFacts, r: Reversal, rule_kind: RuleKind, effective_at: datetime
) -> CommissionData:
    c = r.reduction
    return _taking_back(
        facts, "reversed", c.cause, c.cause_id, r.rule, rule_kind, r.kept, r.amount, effective_at
    )


def restoration_data(
    facts: EntryFacts, r: Restoration, rule_kind: RuleKind, effective_at: datetime
) -> CommissionData:
    """A restoration: an accrued entry, cause ``credit_note_voided`` (the note's id)."""
    return _taking_back(
        facts, "accrued", "credit_note_voided", r.voided.cause_id, r.rule, rule_kind, r.kept,
        r.amount, effective_at,
    )  # fmt: skip


def key(tenant_id: str, partner_id: str) -> str:
    return topics.partition_key(tenant_id, partner_id)


def commission_event(data: CommissionData, cause: CloudEvent) -> CloudEvent:
    cls = CommissionAccrued if data.kind == "accrued" else CommissionReversed
    return cls(source=SOURCE, subject=data.partner_id, data=data, **cause.caused())


def statement_issued(data: StatementData, cause: CloudEvent) -> CommissionStatementIssued:
    return CommissionStatementIssued(
        source=SOURCE, subject=data.partner_id, data=data, **cause.caused()
    )


def payout_recorded(data: PayoutData, cause: CloudEvent) -> CommissionPayoutRecorded:
    return CommissionPayoutRecorded(
        source=SOURCE, subject=data.partner_id, data=data, **cause.caused()
    )
