"""Credit notes' arithmetic (workers/invoicing/credit_notes_service.py): a note never
exceeds what remains creditable, per line and in total; the tax split of a note by amount
is exact; its outcome settles every minor unit once."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.invoicing import credit_notes_service as cns
from workers.invoicing.errors import Conflict, NotFound

RATES = st.sampled_from([None, Decimal("0"), Decimal("0.05"), Decimal("0.1"), Decimal("0.19"),
                         Decimal("0.11"), Decimal("0.075")])  # fmt: skip
ROUNDINGS = st.sampled_from(["half_even", "half_up", "down", "up"])
CURRENCIES = st.sampled_from(["JPY", "USD", "BHD"])


@st.composite
def invoices(draw: st.DrawFn) -> list[cns.ChargeLine]:
    n = draw(st.integers(1, 5))
    lines = [
        cns.ChargeLine(i, f"line {i}", draw(st.integers(0, 10**7)), "flat",
                       tax_rate=draw(st.one_of(st.none(), RATES)))
        for i in range(n)
    ]  # fmt: skip
    for target in range(n):  # a discount line (negative) on some lines
        if draw(st.booleans()):
            cut = draw(st.integers(0, lines[target].amount))
            lines.append(cns.ChargeLine(len(lines), "discount", -cut, "discount",
                                        applies_to=target))  # fmt: skip
    return lines


@settings(max_examples=300, deadline=None)
@given(invoices(), RATES, ROUNDINGS, CURRENCIES, st.data())
def test_a_note_never_exceeds_what_remains_per_line_and_in_total(
    lines: list[cns.ChargeLine],
    rate: Decimal | None,
    rounding: str,
    currency: str,
    data: st.DataObject,
) -> None:
    credited: dict[int, int] = {}
    remaining = data.draw(st.integers(0, 10**8))
    for _ in range(4):  # successive notes on the same invoice
        left = cns.creditable(lines, credited)
        positions = data.draw(st.lists(st.sampled_from(sorted(left)), unique=True, min_size=1))
        requested = [(p, data.draw(st.integers(1, left[p] + 10))) for p in positions]
        try:
            note = cns.by_lines(requested, lines, credited, rate, currency, rounding, remaining)
        except Conflict:
            # refused only when a line or the subtotal asks for more than remains
            assert (
                any(a > left[p] for p, a in requested) or sum(a for _, a in requested) > remaining
            )
            continue
        assert all(a <= left[p] for p, a in requested)
        assert note.total <= remaining
        assert note.subtotal == sum(ln.amount for ln in note.lines)
        assert note.tax == sum(ln.tax for ln in note.lines) >= 0
        remaining -= note.total
        for p, a in requested:
            credited[p] = credited.get(p, 0) + a
    # no line was ever credited beyond its amount net of its discounts
    net = cns.creditable(lines, {})
    assert all(credited.get(p, 0) <= net[p] for p in net)


@settings(max_examples=500, deadline=None)
@given(st.integers(1, 10**12), RATES, ROUNDINGS)
def test_the_tax_split_of_a_note_by_amount_is_exact(
    amount: int, rate: Decimal | None, rounding: str
) -> None:
    note = cns.by_amount(amount, rate, rounding, amount, "credit")
    assert note.subtotal + note.tax == note.total == amount
    # the tax is amount * rate / (1 + rate) rounded once: within half a minor unit (or
    # one, rounding up/down)
    exact = Decimal(amount) * (rate or 0) / (1 + (rate or 0))
    assert abs(Decimal(note.tax) - exact) <= (Decimal("0.5") if "half" in rounding else 1)
    assert 0 <= note.tax <= amount


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9),
       st.sampled_from(["refund", "credit"]))  # fmt: skip
def test_an_outcome_settles_every_minor_unit_once(
    total: int, due: int, credits_left: int, cash_left: int, settle: str
) -> None:
    try:
        out = cns.outcome(total, due, credits_left, cash_left, settle)
    except Conflict:
        assert total > due + credits_left + cash_left
        return
    assert out.reduce_due + out.credits_returned + out.refund + out.to_balance == total
    assert out.reduce_due <= due and out.credits_returned <= credits_left
    assert out.refund + out.to_balance <= cash_left
    assert (out.refund == 0) if settle == "credit" else (out.to_balance == 0)


def test_worked_examples_by_hand() -> None:
    lines = [cns.ChargeLine(0, "Base fee", 10_000, "flat"),
             cns.ChargeLine(1, "Calls", 3_000, "per_unit", tax_rate=Decimal("0.05")),
             cns.ChargeLine(2, "10 % off", -1_000, "discount", applies_to=0)]  # fmt: skip
    # base fee 100.00 less its 10.00 discount: 90.00 left; calls 30.00 at their own 5 %
    note = cns.by_lines([(0, 9_000), (1, 1_000)], lines, {}, Decimal("0.1"), "USD", "half_even",
                        10**9)  # fmt: skip
    # 10 % of 90.00 = 9.00; 5 % of 10.00 = 0.50
    assert [(ln.amount, ln.tax) for ln in note.lines] == [(9_000, 900), (1_000, 50)]
    assert (note.subtotal, note.tax, note.total) == (10_000, 950, 10_950)
    with pytest.raises(Conflict) as e:
        cns.by_lines([(0, 1)], lines, {0: 9_000}, Decimal("0.1"), "USD", "half_even", 10**9)
    assert e.value.field == "lines[0].amount"
    with pytest.raises(NotFound):
        cns.by_lines([(2, 1)], lines, {}, Decimal("0.1"), "USD", "half_even", 10**9)
    # the cap: 4 left of the invoice; 50 % of 3 = 1.5 -> 2 would make 5: the tax is cut to 1
    capped = cns.by_lines([(0, 3)], lines, {}, Decimal("0.5"), "USD", "half_even", 4)
    assert (capped.subtotal, capped.tax, capped.total) == (3, 1, 4)
    # KWD (exponent 3), 5 %: 2.100 tax included = 2.000 + 0.100
    assert cns.by_amount(2_100, Decimal("0.05"), "half_even", 2_100, "x").tax == 100
    # JPY, 10 %: 1000 tax included: 1000 * 0.1 / 1.1 = 90.909... -> 91, net 909
    assert cns.by_amount(1_000, Decimal("0.1"), "half_even", 1_000, "x").tax == 91
    # outcome: 27.50 on an invoice with 82.50 due -> all of it off the amount due
    assert cns.outcome(2_750, 8_250, 0, 0, "refund") == cns.Outcome(2_750, 0, 0, 0)
    # 100 on 30 due, 50 of credits left, 40 paid in cash: 30 due, 50 credits, 20 refunded
    assert cns.outcome(100, 30, 50, 40, "refund") == cns.Outcome(30, 50, 20, 0)
