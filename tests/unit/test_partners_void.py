"""A voided credit note gives back the commissions it reversed (docs/partners.md, Reversals):
worked examples by hand (USD, exponent 2), and the property that issuing credit notes and
then voiding any of them leaves each rule's net ledger exactly where issuing only the notes
still live would have."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.partners import CommissionRuleSpec, entry_id
from workers.partners.service import (
    EntryFacts,
    PaidInvoice,
    Reduction,
    Rule,
    accrue,
    restoration_data,
    restorations,
    reversals,
    rule_of,
)

FAST = settings(max_examples=300, deadline=None)


def percent(key: str, p: str, **kw: object) -> Rule:
    return rule_of(
        CommissionRuleSpec.model_validate(
            {"key": key, "partner_tier": "gold", "kind": "percent", "percent": p, **kw}
        )
    )


def invoice(total: int, tax: int, lines: tuple[tuple[str, int], ...]) -> PaidInvoice:
    return PaidInvoice(
        invoice_id="inv",
        currency="USD",
        total=total,
        tax=tax,
        amount_paid=total,
        plan=None,
        lines=lines,
    )


def credited(cn_id: str, subtotal: int, tax: int) -> Reduction:
    """A credit note of the paid invoice whose whole total went to the customer's balance."""
    return Reduction("credit_note", cn_id, subtotal + tax, subtotal, subtotal + tax)


def test_voiding_the_only_credit_note_restores_exactly_what_it_reversed() -> None:
    # subtotal 100.00 + 10.00 tax = 110.00, paid; N = K0 = 100.00; 12.5 % → a0 = 12.50
    inv = invoice(11000, 1000, (("base", 10000),))
    res = accrue(inv, [percent("std", "0.125")], Fraction(0), {})
    assert [a.amount for a in res.accruals] == [1250]
    # a credit note of 30.00 + 3.00 tax credited to the balance: net part 33.00 * 30/33 =
    # 30.00; K = 70.00; target round(12.50 * 70/100) = 8.75 → reversed 3.75
    cn = credited("cn_1", 3000, 300)
    out, done = reversals({"std": (1250, 0)}, res.k0, inv.net, inv.total, [], [cn])
    assert [r.amount for r in out] == [375] and done == {"std": 375}
    # voided: no cause left, K = K0, target 12.50, reversed should be 0 → 3.75 accrues again
    back, after = restorations({"std": (1250, 375)}, res.k0, inv.net, inv.total, [], cn)
    assert [(r.rule, r.amount, r.voided.cause_id, r.kept) for r in back] == [
        ("std", 375, "cn_1", Fraction(10000))
    ]
    assert after == {"std": 0}
    # voided again (not a cause any more): nothing more
    again, _ = restorations({"std": (1250, 0)}, res.k0, inv.net, inv.total, [], cn)
    assert again == []


def test_voiding_one_of_two_credit_notes_restores_only_its_part_per_rule() -> None:
    # lines base 60.00 and api 40.00, 10.00 tax, total 110.00 paid: N = K0 = 100.00
    # std (default) 10 % of 60.00 = 6.00; api (product) 20 % of 40.00 = 8.00
    inv = invoice(11000, 1000, (("base", 6000), ("api", 4000)))
    rules = [percent("std", "0.1"), percent("api", "0.2", product="api")]
    res = accrue(inv, rules, Fraction(0), {})
    assert {a.rule.key: a.amount for a in res.accruals} == {"api": 800, "std": 600}
    # two credit notes of 10.05 + 1.00 tax (10.05 * 10 % = 1.005 → 1.00 half-even), each
    # credited to the balance: net part 11.05 * 10.05 / 11.05 = 10.05 each
    cn1, cn2 = credited("cn_1", 1005, 100), credited("cn_2", 1005, 100)
    state = {"api": (800, 0), "std": (600, 0)}
    # cn_1: K = 89.95; std round(6.00 * 0.8995 = 5.397) = 5.40 → 0.60 reversed;
    #       api round(8.00 * 0.8995 = 7.196) = 7.20 → 0.80 reversed
    out, done = reversals(state, res.k0, inv.net, inv.total, [], [cn1])
    assert {r.rule: r.amount for r in out} == {"api": 80, "std": 60}
    state = {k: (a0, done[k]) for k, (a0, _) in state.items()}
    # cn_2: K = 79.90; std round(4.794) = 4.79 → 0.61 more; api round(6.392) = 6.39 → 0.81
    out, done = reversals(state, res.k0, inv.net, inv.total, [cn1], [cn2])
    assert {r.rule: r.amount for r in out} == {"api": 81, "std": 61}
    assert done == {"api": 161, "std": 121}
    state = {k: (a0, done[k]) for k, (a0, _) in state.items()}
    # cn_1 voided: cn_2 alone keeps K = 89.95, targets 5.40 and 7.20, so the reversed totals
    # go back to 0.60 and 0.80: 0.61 and 0.81 accrue again (not the 0.60 and 0.80 cn_1 took:
    # the ledger is what issuing cn_2 alone gives, each target rounded once)
    back, after = restorations(state, res.k0, inv.net, inv.total, [cn2], cn1)
    assert {r.rule: r.amount for r in back} == {"api": 81, "std": 61}
    assert after == {"api": 80, "std": 60}
    _, alone = reversals({"api": (800, 0), "std": (600, 0)}, res.k0, inv.net, inv.total, [], [cn2])
    assert alone == after
    # then cn_2 voided too: everything accrues again
    state = {k: (a0, after[k]) for k, (a0, _) in state.items()}
    back, after = restorations(state, res.k0, inv.net, inv.total, [], cn2)
    assert {r.rule: r.amount for r in back} == {"api": 80, "std": 60}
    assert after == {"api": 0, "std": 0}


def test_a_restoration_is_an_accrued_entry_naming_the_note_and_its_accrual() -> None:
    facts = EntryFacts("t1", "agent-1", "cust-a", "inv-1", "INV-1", "USD", "2026-03")
    [r], _ = restorations(
        {"std": (1250, 375)}, Fraction(10000), 10000, 11000, [], credited("cn_1", 3000, 300)
    )
    at = datetime(2026, 3, 20, tzinfo=UTC)
    d = restoration_data(facts, r, "percent", at)
    assert (d.kind, d.cause, d.cause_id, d.amount, d.base_minor) == (
        "accrued",
        "credit_note_voided",
        "cn_1",
        375,
        "10000",
    )
    assert d.accrual_id == entry_id("t1", "accrued", "inv-1", "std")
    assert d.entry_id == entry_id("t1", "accrued", "inv-1", "std", "credit_note_voided", "cn_1")
    assert d.entry_id != d.accrual_id


# --- the property -------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the partners worker keeps of one invoice, driven as its ledger does."""

    k0: Fraction
    a0: dict[str, int]
    net: int = 0
    total: int = 0
    live: list[Reduction] = field(default_factory=list)
    reversed_: dict[str, int] = field(default_factory=dict)
    signed: dict[str, int] = field(default_factory=dict)  # Σ entries: accruals +, reversals -

    def __post_init__(self) -> None:
        self.reversed_ = dict.fromkeys(self.a0, 0)
        self.signed = dict(self.a0)

    def state(self) -> dict[str, tuple[int, int]]:
        return {k: (a0, self.reversed_[k]) for k, a0 in self.a0.items()}

    def issue(self, r: Reduction) -> None:
        out, done = reversals(self.state(), self.k0, self.net, self.total, self.live, [r])
        for x in out:
            assert x.amount > 0
            self.signed[x.rule] -= x.amount
        self.reversed_ = done
        self.live.append(r)

    def void(self, r: Reduction) -> None:
        self.live.remove(r)
        out, done = restorations(self.state(), self.k0, self.net, self.total, self.live, r)
        for x in out:
            assert x.amount > 0 and x.voided == r
            self.signed[x.rule] += x.amount
        self.reversed_ = done


notes = st.lists(
    st.tuples(st.integers(0, 10**7), st.integers(0, 10**6), st.booleans()),
    min_size=1,
    max_size=6,
)


@FAST
@given(
    st.integers(1, 10**8).map(Fraction),
    st.dictionaries(st.sampled_from(["api", "std", "vol"]), st.integers(0, 10**6), min_size=1),
    notes,
    st.data(),
)
def test_voiding_any_subset_leaves_the_ledger_of_the_notes_still_live(
    k0: Fraction,
    a0: dict[str, int],
    issued: list[tuple[int, int, bool]],
    data: st.DataObject,
) -> None:
    # each cause: a credit note (subtotal, tax) credited to the balance, or a refund of an
    # amount (net part amount * N / total, N = K0 here and total = N + 10 %)
    net = int(k0)
    total = net + net // 10
    causes = [
        credited(f"cn_{i}", a, b) if is_note else Reduction("refund", f"re_{i}", a)
        for i, (a, b, is_note) in enumerate(issued)
    ]
    ledger = Ledger(k0, a0, net, total)
    for c in causes:
        ledger.issue(c)
    voidable = [c for c in causes if c.cause == "credit_note"]
    chosen = data.draw(st.lists(st.booleans(), min_size=len(voidable), max_size=len(voidable)))
    voided = data.draw(st.permutations([c for c, v in zip(voidable, chosen, strict=True) if v]))
    for c in voided:
        ledger.void(c)
    # the same as issuing only the causes still live, in their order
    fresh = Ledger(k0, a0, net, total)
    for c in causes:
        if c not in voided:
            fresh.issue(c)
    assert ledger.reversed_ == fresh.reversed_
    assert ledger.signed == fresh.signed
    for rule, amount in a0.items():
        assert 0 <= ledger.signed[rule] <= amount
        assert ledger.signed[rule] == amount - ledger.reversed_[rule]
    # and a cause issued after the voids counts from there, as if the voided never were
    late = credited("cn_late", data.draw(st.integers(0, 10**7)), 0)
    ledger.issue(late)
    fresh.issue(late)
    assert ledger.signed == fresh.signed
