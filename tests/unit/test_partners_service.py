"""The commission math, pure: worked examples computed by hand in currencies of exponent 0
(JPY), 2 (USD) and 3 (BHD), and properties of the reversals and the volume tiers."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.partners import CommissionRuleSpec, CommissionTier
from workers.partners.service import (
    PaidInvoice,
    Reduction,
    Rule,
    Totals,
    accrue,
    after_payout,
    exact_text,
    parse_exact,
    reversals,
    rule_of,
    statement_number,
    statement_totals,
    tiered,
)

FAST = settings(max_examples=300, deadline=None)


def percent(key: str, p: str, **kw: object) -> Rule:
    return rule_of(
        CommissionRuleSpec.model_validate(
            {"key": key, "partner_tier": "gold", "kind": "percent", "percent": p, **kw}
        )
    )


def invoice(
    total: int,
    tax: int,
    lines: tuple[tuple[str, int], ...],
    *,
    currency: str = "USD",
    paid: int | None = None,
    plan: str | None = "pro",
) -> PaidInvoice:
    return PaidInvoice(
        invoice_id="inv",
        currency=currency,
        total=total,
        tax=tax,
        amount_paid=total if paid is None else paid,
        plan=plan,
        lines=lines,
    )


def amounts(result: object) -> dict[str, int]:
    return {a.rule.key: a.amount for a in result.accruals}  # type: ignore[attr-defined]


# --- accruals --------------------------------------------------------------------------------


def test_percent_on_the_paid_net_of_tax_discount_and_credits_usd() -> None:
    # lines: base 100.00 and api 50.00 (charges), a 15.00 discount, 20.00 of prepaid credits
    # subtotal 150.00; tax 11 % of (150.00 - 15.00) = 14.85; credits after tax
    # total = 150.00 - 15.00 - 20.00 + 14.85 = 129.85; N = 129.85 - 14.85 = 115.00
    inv = invoice(12985, 1485, (("base", 10000), ("api", 5000)))
    assert inv.net == 11500 and inv.paid_net == 11500
    # one default rule at 10 %: 11.50
    result = accrue(inv, [percent("std", "0.1")], Fraction(0), {})
    assert amounts(result) == {"std": 1150}
    # a product rule for api at 20 % beside it: each rule's base is its lines' share of N
    # api: 115.00 * 50/150 = 38.3333…, 20 % = 7.6666… → 7.67
    # base: 115.00 * 100/150 = 76.6666…, 10 % = 7.6666… → 7.67 (one rounding per line)
    result = accrue(inv, [percent("std", "0.1"), percent("api", "0.2", product="api")], 0, {})
    assert amounts(result) == {"api": 767, "std": 767}
    assert exact_text(result.accruals[0].base) == "11500/3"
    assert result.volume == 11500  # the month's volume grows by K0


def test_plan_rule_beats_the_default_and_product_beats_the_plan() -> None:
    rules = [
        percent("std", "0.1"),
        percent("pro", "0.15", plan="pro"),
        percent("seats", "0.3", product="seats"),
    ]
    inv = invoice(10000, 0, (("base", 6000), ("seats", 4000)))
    # base under plan pro: 60.00 * 15 % = 9.00; seats: 40.00 * 30 % = 12.00
    assert amounts(accrue(inv, rules, Fraction(0), {})) == {"pro": 900, "seats": 1200}
    # no subscription (no plan): the default rule takes the base line
    assert amounts(accrue(invoice(10000, 0, (("base", 10000),), plan=None), rules, 0, {})) == {
        "std": 1000
    }


def test_a_credit_note_before_payment_is_already_out_of_amount_paid() -> None:
    # total 111.00 incl. 11.00 tax; a 22.00 credit note reduced what was due: 89.00 paid
    # K0 = 100.00 * 89.00 / 111.00 = 80.1801…; 10 % = 8.01801… → 8.02
    inv = invoice(11100, 1100, (("base", 10000),), paid=8900)
    result = accrue(inv, [percent("std", "0.1")], Fraction(0), {})
    assert amounts(result) == {"std": 802}
    # the credit note itself returned nothing paid: no reversal
    note = Reduction("credit_note", "cn_1", amount=0, subtotal=2000, total=2200)
    out, _ = reversals({"std": (802, 0)}, result.k0, inv.net, inv.total, [], [note])
    assert out == []


def test_fixed_per_invoice_with_a_cap_per_month_jpy() -> None:
    fixed = rule_of(
        CommissionRuleSpec(
            key="flat",
            partner_tier="gold",
            kind="fixed",
            amount=500,
            currency="JPY",
            cap_per_period=1200,
        )
    )
    inv = invoice(11000, 1000, (("stay", 10000),), currency="JPY")
    accrued: dict[str, int] = {}
    got = []
    for _ in range(4):  # ¥500, ¥500, then ¥200 left under the ¥1,200 cap, then nothing
        result = accrue(inv, [fixed], Fraction(0), accrued)
        got.append(amounts(result)["flat"])
        accrued = result.accrued
    assert got == [500, 500, 200, 0]
    # a fixed rule in JPY does not apply to a USD invoice
    assert amounts(accrue(invoice(11000, 1000, (("stay", 10000),)), [fixed], 0, {})) == {}


def test_cap_per_invoice_jpy() -> None:
    capped = percent("std", "0.1", cap_per_invoice=700, currency="JPY")
    inv = invoice(11000, 1000, (("stay", 10000),), currency="JPY")
    assert amounts(accrue(inv, [capped], Fraction(0), {})) == {"std": 700}  # ¥1,000 → ¥700


def test_volume_tiers_crossed_mid_month_bhd() -> None:
    # BHD has 3 decimals. 5 % up to 100.000, 10 % up to 300.000, 15 % above
    spec = CommissionRuleSpec(
        key="vol",
        partner_tier="gold",
        kind="tiered",
        currency="BHD",
        tiers=[
            CommissionTier(up_to=100_000, percent=Decimal("0.05")),
            CommissionTier(up_to=300_000, percent=Decimal("0.1")),
            CommissionTier(up_to=None, percent=Decimal("0.15")),
        ],
    )
    rules = [rule_of(spec)]
    volume, accrued = Fraction(0), {}
    got = []
    for net in (80_000, 50_001, 250_000):
        inv = invoice(net, 0, (("seat", net),), currency="BHD")
        result = accrue(inv, rules, volume, accrued)
        got.append(amounts(result)["vol"])
        volume, accrued = result.volume, result.accrued
    # A: [0, 80.000) at 5 % = 4.000
    # B straddles 100.000: [80.000, 100.000) 5 % = 1.000 + [100.000, 130.001) 10 % = 3.0001
    #    = 4.0001 → 4.000
    # C straddles 300.000: [130.001, 300.000) 10 % = 16.9999 + [300.000, 380.001) 15 %
    #    = 12.00015 → 29.00005 → 29.000
    assert got == [4_000, 4_000, 29_000]
    assert volume == 380_001 and accrued == {"vol": 37_000}


def test_half_even_on_the_line() -> None:
    # 10 % of 25 minor units is 2.5 → 2; of 35, 3.5 → 4
    rules = [percent("std", "0.1")]
    assert amounts(accrue(invoice(25, 0, (("x", 25),)), rules, 0, {})) == {"std": 2}
    assert amounts(accrue(invoice(35, 0, (("x", 35),)), rules, 0, {})) == {"std": 4}


def test_nothing_on_a_zero_or_negative_net() -> None:
    rules = [percent("std", "0.1")]
    assert amounts(accrue(invoice(0, 0, (("x", 0),)), rules, 0, {})) == {}
    assert amounts(accrue(invoice(500, 500, (("x", 0),)), rules, 0, {})) == {}


# --- reversals -------------------------------------------------------------------------------


def test_a_partial_refund_then_the_rest_reverses_exactly_the_accrual_usd() -> None:
    # total 111.00 (11.00 tax), N = K0 = 100.00, 10 % → a0 = 10.00
    inv = invoice(11100, 1100, (("base", 10000),))
    a0 = amounts(accrue(inv, [percent("std", "0.1")], 0, {}))["std"]
    assert a0 == 1000
    first = Reduction("refund", "re_1", 3333)
    # its net part: 33.33 * 100/111 = 30.027…; K = 69.972…; target round(6.9972…) = 7.00
    out, done = reversals({"std": (a0, 0)}, inv.paid_net, inv.net, inv.total, [], [first])
    assert [r.amount for r in out] == [300] and done == {"std": 300}
    rest = Reduction("refund", "re_2", 7767)  # the rest: K = 0, target 0
    out, done = reversals({"std": (a0, 300)}, inv.paid_net, inv.net, inv.total, [first], [rest])
    assert [r.amount for r in out] == [700] and done == {"std": 1000}
    # the same cause again changes nothing
    out, _ = reversals({"std": (a0, 1000)}, inv.paid_net, inv.net, inv.total, [first, rest], [])
    assert out == []


def test_a_credit_note_after_payment_reverses_its_net_share() -> None:
    inv = invoice(11100, 1100, (("base", 10000),))
    # credit note: 20.00 + 2.00 tax refunded; net part 22.00 * 20/22 = 20.00 → K = 80.00
    note = Reduction("credit_note", "cn_1", amount=2200, subtotal=2000, total=2200)
    out, done = reversals({"std": (1000, 0)}, inv.paid_net, inv.net, inv.total, [], [note])
    assert [(r.rule, r.amount) for r in out] == [("std", 200)] and done == {"std": 200}


def test_reversals_per_rule_each_rounded_from_its_own_target() -> None:
    inv = invoice(12985, 1485, (("base", 10000), ("api", 5000)))
    rules = [percent("std", "0.1"), percent("api", "0.2", product="api")]
    res = accrue(inv, rules, Fraction(0), {})
    state = {a.rule.key: (a.amount, 0) for a in res.accruals}  # 7.67 each
    half = Reduction("refund", "re_1", 12985 // 2)  # 64.92 of 129.85
    out, _ = reversals(state, res.k0, inv.net, inv.total, [], [half])
    # K = 115.00 - 64.92 * 115/129.85 = 57.505…; each target round(767 * K / 11500)
    # = round(383.5…) = 384: 383 reversed on each
    assert {r.rule: r.amount for r in out} == {"api": 383, "std": 383}


# --- statements -------------------------------------------------------------------------------


def test_statement_totals_and_numbers() -> None:
    assert statement_totals([1000, 500, -200]) == Totals(1300, 1300, "payable")
    assert statement_totals([-300, 100]) == Totals(-200, 0, "carried")
    assert statement_totals([]) == Totals(0, 0, "paid")
    assert after_payout(1300, 1000) == "payable" and after_payout(1300, 1300) == "paid"
    assert statement_number(2026, 42) == "CS-2026-000042"


def test_exact_text_round_trips() -> None:
    for value in (Fraction(0), Fraction(5, 2), Fraction(-1, 8), Fraction(10000, 3), Fraction(7)):
        assert parse_exact(exact_text(value)) == value
    assert exact_text(Fraction(123455, 10)) == "12345.5"
    assert exact_text(Fraction(1, 40)) == "0.025"


# --- properties ---------------------------------------------------------------------------------


@st.composite
def paid(draw: st.DrawFn) -> tuple[PaidInvoice, list[int]]:
    net = draw(st.integers(1, 10**9))
    tax = draw(st.integers(0, net))
    total = net + tax
    inv = invoice(total, tax, (("base", net),))
    cuts = []
    if total > 1:
        cuts = sorted(draw(st.lists(st.integers(1, total - 1), max_size=5, unique=True)))
    parts = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    return inv, parts


@FAST
@given(paid(), st.integers(0, 10**6).map(lambda n: Fraction(n, 10**6)), st.booleans())
def test_reversals_never_exceed_and_full_refunds_reverse_exactly(
    case: tuple[PaidInvoice, list[int]], p: Fraction, full: bool
) -> None:
    inv, parts = case
    rule = Rule(key="std", kind="percent", percent=p)
    a0 = amounts(accrue(inv, [rule], Fraction(0), {})).get("std", 0)
    refunds = [Reduction("refund", f"re_{i}", amount) for i, amount in enumerate(parts)]
    if not full:
        refunds = refunds[:-1]
    applied: list[Reduction] = []
    reversed_ = 0
    for r in refunds:  # one at a time, as they arrive
        out, done = reversals(
            {"std": (a0, reversed_)}, inv.paid_net, inv.net, inv.total, applied, [r]
        )
        assert all(x.amount > 0 for x in out)
        reversed_ = done["std"]
        applied.append(r)
        assert reversed_ <= a0
    if full:
        assert reversed_ == a0
    # all at once gives the same sum as one at a time
    _, at_once = reversals({"std": (a0, 0)}, inv.paid_net, inv.net, inv.total, [], refunds)
    assert at_once["std"] == reversed_


tier_bounds = st.lists(st.integers(1, 10**7), min_size=0, max_size=5, unique=True).map(sorted)
amount = st.integers(0, 10**8).map(Fraction)


@FAST
@given(tier_bounds, st.integers(0, 10**6).map(lambda n: Fraction(n, 10**6)), amount, amount)
def test_tiers_of_one_rate_are_the_plain_percent(
    bounds: list[int], p: Fraction, v0: Fraction, base: Fraction
) -> None:
    tiers = [(b, p) for b in bounds] + [(None, p)]
    assert tiered(tiers, v0, base) == p * base


@FAST
@given(
    tier_bounds,
    st.lists(st.integers(0, 10**6).map(lambda n: Fraction(n, 10**6)), min_size=6, max_size=6),
    amount,
    amount,
    amount,
)
def test_splitting_the_volume_splits_the_tiered_commission(
    bounds: list[int], rates: list[Fraction], v0: Fraction, b1: Fraction, b2: Fraction
) -> None:
    tiers = [(b, rates[i]) for i, b in enumerate(bounds)] + [(None, rates[-1])]
    assert tiered(tiers, v0, b1) + tiered(tiers, v0 + b1, b2) == tiered(tiers, v0, b1 + b2)
    assert tiered(tiers, v0, b1) <= max(rates) * b1
