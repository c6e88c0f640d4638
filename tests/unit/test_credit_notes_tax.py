"""Credit notes reverse tax exactly, rate by rate (workers/invoicing/credit_notes_service.py
on invoices with a tax breakdown, docs/credit-notes.md): worked examples by hand, and the
properties a tax report relies on (the notes of a line never reverse more of a rate than
the line carried; the notes that credit everything reverse exactly the invoice's taxes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.taxes import TaxAmount
from workers.invoicing import credit_notes_service as cns
from workers.invoicing.amounts import BEFORE_TAX, Line, totals
from workers.invoicing.errors import Conflict
from workers.invoicing.taxes import Rate, Taxation

T0 = datetime(2031, 10, 1, tzinfo=UTC)
PPN = Rate("ppn", "PPN", Decimal(12), base=Fraction(11, 12), id="ppn-2025", country="ID")
VAT = Rate("vat-de", "VAT", Decimal(19), id="vat-de", country="DE")
VAT_INCL = Rate("vat-de-gross", "VAT", Decimal(19), inclusive=True, id="vat-i", country="DE")
GST = Rate("gst", "GST", Decimal(5), id="gst", country="CA")
PST = Rate("pst-bc", "PST", Decimal(7), id="pst", country="CA", jurisdiction="CA-BC")
GST_INCL = Rate("gst-i", "GST", Decimal(5), inclusive=True, id="gst-i")
PST_INCL = Rate("pst-i", "PST", Decimal(7), inclusive=True, id="pst-i")


def charge(amount: int, *rates: Rate, kind: str = "flat", **kw: object) -> Line:
    return Line(price_key="p", kind=kind, description=f"line of {amount}", meter=None,
                subject=None, period_start=T0, period_end=T0, quantity=Decimal(1),
                unit_price=None, tiers=(), proration=Decimal(1), minimum_applied=False,
                amount=amount, rates=rates, **kw)  # type: ignore[arg-type]  # fmt: skip


@dataclass
class Invoice:
    """A finalized invoice as a note sees it, and the notes issued on it so far."""

    lines: list[cns.ChargeLine]
    breakdown: list[TaxAmount]
    charged: int  # total + credits
    rounding: str = "half_even"
    notes: list[cns.Note] = field(default_factory=list)

    @classmethod
    def of(cls, lines: list[Line], status: str = "taxable", rounding: str = "invoice",
           mode: str = "half_even", before_tax: bool = False) -> Invoice:  # fmt: skip
        how = Taxation((), status, rounding)  # type: ignore[arg-type]
        t = totals(lines, how, "USD", mode, BEFORE_TAX if before_tax else "after_tax")
        charge_lines = [
            cns.ChargeLine(i, ln.description, ln.amount, ln.kind, ln.grant_id, None,
                           ln.applies_to, tuple(a.model() for a in taxes))
            for i, (ln, taxes) in enumerate(zip(lines, t.computed.lines, strict=True))
        ]  # fmt: skip
        breakdown = [a.model() for a in t.computed.breakdown]
        return cls(charge_lines, breakdown, t.total + t.credits, mode)

    def _earlier(self) -> tuple[dict[int, int], cns.Reversed, int]:
        credited: dict[int, int] = {}
        for n in self.notes:
            for ln in n.lines:
                if ln.line is not None:
                    credited[ln.line] = credited.get(ln.line, 0) + ln.line_amount
        before = cns.Reversed.of((ln.line, ln.taxes) for n in self.notes for ln in n.lines)
        return credited, before, self.charged - sum(n.total for n in self.notes)

    def by_lines(self, *requested: tuple[int, int]) -> cns.Note:
        credited, before, remaining = self._earlier()
        note = cns.by_lines(list(requested), self.lines, credited, None, "USD", self.rounding,
                            remaining, breakdown=self.breakdown, earlier=before)  # fmt: skip
        self.notes.append(note)
        return note

    def by_amount(self, amount: int) -> cns.Note:
        _, before, remaining = self._earlier()
        note = cns.by_amount(amount, None, self.rounding, remaining, "credit",
                             breakdown=self.breakdown, charged=self.charged,
                             earlier=before)  # fmt: skip
        self.notes.append(note)
        return note

    def left(self) -> dict[int, int]:
        return cns.creditable(self.lines, self._earlier()[0])

    def remaining(self) -> int:
        return self._earlier()[2]


def amounts(taxes: tuple[TaxAmount, ...] | list[TaxAmount]) -> list[tuple[object, ...]]:
    """(name, taxable_amount, taxable_base, tax, taxability) of each rate."""
    return [(t.name, t.taxable_amount, t.taxable_base, t.tax, t.taxability) for t in taxes]


# --- worked examples ---------------------------------------------------------------------


def test_a_ppn_line_credited_in_full_reverses_its_ppn_and_dpp_exactly() -> None:
    # Rp 1,000,000 = 100,000,000 sen: DPP 11/12 = 91,666,666.67 -> 91,666,667; PPN 12 % of
    # it = 11,000,000.04 -> 11,000,000
    inv = Invoice.of([charge(100_000_000, PPN)])
    note = inv.by_lines((0, 100_000_000))
    assert amounts(note.breakdown) == [("ppn", 100_000_000, 91_666_667, 11_000_000, "taxable")]
    (ln,) = note.lines
    assert (ln.amount, ln.tax, ln.tax_rate) == (100_000_000, 11_000_000, Decimal("0.11"))
    assert (note.subtotal, note.tax, note.total) == (100_000_000, 11_000_000, 111_000_000)
    assert note.breakdown[0].taxable_base_factor == "11/12"


def test_a_ppn_line_credited_in_two_halves_reverses_exactly_its_dpp_and_ppn() -> None:
    inv = Invoice.of([charge(100_000_000, PPN)])
    # half: PPN 11,000,000 / 2 = 5,500,000; DPP 91,666,667 / 2 = 45,833,333.5 -> half-even
    # 45,833,334
    first = inv.by_lines((0, 50_000_000))
    assert amounts(first.breakdown) == [("ppn", 50_000_000, 45_833_334, 5_500_000, "taxable")]
    # the rest of the line: the rest of each figure, 91,666,667 - 45,833,334 = 45,833,333
    rest = inv.by_lines((0, 50_000_000))
    assert amounts(rest.breakdown) == [("ppn", 50_000_000, 45_833_333, 5_500_000, "taxable")]
    assert first.total + rest.total == 111_000_000 == inv.charged


def test_a_line_with_two_rates_credited_in_part_reverses_each_rate_in_proportion() -> None:
    # CAD 100.00 with GST 5 % (500) and PST 7 % (700) on the same line
    inv = Invoice.of([charge(10_000, GST, PST)])
    # 33.33 of it: GST 500 x 3,333 / 10,000 = 166.65 -> 167; PST 700 x 0.3333 = 233.31 -> 233
    note = inv.by_lines((0, 3_333))
    assert amounts(note.lines[0].taxes) == [
        ("gst", 3_333, 3_333, 167, "taxable"),
        ("pst-bc", 3_333, 3_333, 233, "taxable"),
    ]
    assert note.lines[0].tax_rate is None  # two rates: no one fraction
    assert (note.subtotal, note.tax, note.total) == (3_333, 400, 3_733)
    # the rest: 6,667 with GST 500 - 167 = 333 and PST 700 - 233 = 467
    rest = inv.by_lines((0, 6_667))
    assert [t.tax for t in rest.lines[0].taxes] == [333, 467]
    assert rest.total == 6_667 + 800 and note.total + rest.total == inv.charged == 11_200


def test_an_inclusive_line_credited_in_full_is_its_gross_net_plus_tax() -> None:
    # EUR 119.00 gross at 19 % inclusive: tax 1,900, net 10,000; the amount asked is the
    # gross, and the note's total is that amount (the tax is inside)
    inv = Invoice.of([charge(11_900, VAT_INCL)])
    note = inv.by_lines((0, 11_900))
    (ln,) = note.lines
    assert (ln.amount, ln.tax, ln.line_amount) == (10_000, 1_900, 11_900)
    assert amounts(note.breakdown) == [("vat-de-gross", 10_000, 10_000, 1_900, "taxable")]
    assert note.breakdown[0].inclusive
    assert (note.subtotal, note.tax, note.total) == (10_000, 1_900, 11_900)
    # nothing is left of the line
    assert inv.left() == {0: 0}


def test_an_inclusive_line_credited_in_part_keeps_net_plus_tax_equal_to_the_gross() -> None:
    # 10.00 gross with 119.00 on the same invoice: invoice rounding apportions the tax once
    # rounded on 12,900 (2,060) -> 1,900 and 160; the 10.00 line is 840 net + 160 tax
    inv = Invoice.of([charge(11_900, VAT_INCL), charge(1_000, VAT_INCL)])
    assert amounts(inv.lines[1].taxes) == [("vat-de-gross", 840, 840, 160, "taxable")]
    # 3.33 of it: tax 160 x 333 / 1,000 = 53.28 -> 53, net 333 - 53 = 280
    note = inv.by_lines((1, 333))
    (ln,) = note.lines
    assert (ln.amount, ln.tax, ln.line_amount, note.total) == (280, 53, 333, 333)
    assert ln.taxes[0].taxable_amount + ln.taxes[0].tax == 333
    # then the rest: 667 gross, tax 160 - 53 = 107, net 560
    rest = inv.by_lines((1, 667))
    assert (rest.lines[0].amount, rest.tax, rest.total) == (560, 107, 667)


def test_repeated_partial_notes_never_reverse_more_than_the_line_carried() -> None:
    # 0.40 at 5 %: tax 2. Notes of 0.10 each: 2 x 10 / 40 = 0.5 -> half-up 1 each time; the
    # third would make 3 > 2: it reverses 0 (all that is left), the last the rest, 0
    inv = Invoice.of([charge(40, GST)], mode="half_up")
    taxes = [inv.by_lines((0, 10)).tax for _ in range(4)]
    assert taxes == [1, 1, 0, 0] and sum(taxes) == 2
    # 100.01 at 19 %: 1,900.19 -> 1,900; thirds 3,333, 3,333 then the rest 3,335:
    # 1,900 x 3,333 / 10,001 = 633.22 -> 633, again 633, then exactly 1,900 - 1,266 = 634
    inv = Invoice.of([charge(10_001, VAT)])
    assert [inv.by_lines((0, a)).tax for a in (3_333, 3_333, 3_335)] == [633, 633, 634]


def test_a_reverse_charge_invoices_note_reverses_no_tax() -> None:
    # reverse charge: the rate is shown with tax 0 on the invoice, and on its notes
    inv = Invoice.of([charge(10_000, VAT)], status="reverse_charge")
    note = inv.by_lines((0, 4_000))
    assert amounts(note.breakdown) == [("vat-de", 4_000, 4_000, 0, "reverse_charge")]
    assert (note.tax, note.total, note.lines[0].tax_rate) == (0, 4_000, None)
    rest = inv.by_amount(6_000)
    assert amounts(rest.breakdown) == [("vat-de", 6_000, 6_000, 0, "reverse_charge")]
    assert rest.total == 6_000


def test_a_note_by_amount_splits_across_the_invoices_rates() -> None:
    # 100.00 at 10 % (1,000) and 50.00 at 5 % (250): charged 162.50
    ten = Rate("ten", "Tax 10 %", Decimal(10), id="ten")
    inv = Invoice.of([charge(10_000, ten), charge(5_000, GST)])
    assert inv.charged == 16_250
    # 32.50 is a fifth of it: 1,000 / 5 = 200 and 250 / 5 = 50; net 3,250 - 250 = 3,000
    note = inv.by_amount(3_250)
    assert amounts(note.breakdown) == [
        ("ten", 2_000, 2_000, 200, "taxable"),
        ("gst", 1_000, 1_000, 50, "taxable"),
    ]
    assert (note.subtotal, note.tax, note.total) == (3_000, 250, 3_250)
    # a line note, then everything left by amount: each rate's tax is reversed exactly
    inv.by_lines((0, 1_001))  # 1,000 x 1,001 / 10,000 = 100.1 -> 100
    rest = inv.by_amount(inv.remaining())
    assert [t.tax for t in rest.breakdown] == [1_000 - 200 - 100, 250 - 50]
    assert inv.remaining() == 0


def test_a_line_note_after_an_amount_note_never_exceeds_what_is_left() -> None:
    # 100.00 at 19 %: 119.00. An amount note of 107.10 reverses 1,900 x 10,710 / 11,900 =
    # 1,710 of the tax
    inv = Invoice.of([charge(10_000, VAT)])
    assert inv.by_amount(10_710).tax == 1_710
    # 11.90 are left; 10.00 of the line reverses 190, all that is left of the rate
    note = inv.by_lines((0, 1_000))
    assert (note.tax, note.total) == (190, 1_190)
    # nothing is left of the invoice: one more minor unit of the line is refused
    with pytest.raises(Conflict) as e:
        inv.by_lines((0, 1))
    assert e.value.field == "lines"


def test_an_invoice_before_taxes_keeps_the_rules_it_was_issued_under() -> None:
    lines = [cns.ChargeLine(0, "Base fee", 10_000, "flat")]
    note = cns.by_lines([(0, 2_500)], lines, {}, Decimal("0.1"), "USD", "half_even", 11_000)
    # 10 % of 25.00 = 2.50, and the note says so per rate (a bare rate)
    assert amounts(note.breakdown) == [("tax", 2_500, 2_500, 250, "taxable")]
    assert note.breakdown[0].percentage == Decimal(10)
    amount = cns.by_amount(8_250, Decimal("0.1"), "half_even", 8_250, "x")
    assert amounts(amount.breakdown) == [("tax", 7_500, 7_500, 750, "taxable")]


# --- properties --------------------------------------------------------------------------

RATE_SETS = st.sampled_from([(), (VAT,), (PPN,), (GST, PST), (VAT_INCL,), (GST_INCL, PST_INCL)])
MODES = st.sampled_from(["half_even", "half_up", "up", "down", "ceiling", "floor"])


@st.composite
def invoices(draw: st.DrawFn) -> Invoice:
    lines = [charge(draw(st.integers(1, 10**7)), *draw(RATE_SETS))
             for _ in range(draw(st.integers(1, 4)))]  # fmt: skip
    for target in range(len(lines)):
        if draw(st.booleans()):
            cut = draw(st.integers(0, lines[target].amount - 1))
            lines.append(charge(-cut, kind="discount", applies_to=target))
    status = draw(st.sampled_from(["taxable", "taxable", "exempt", "reverse_charge"]))
    rounding = draw(st.sampled_from(["invoice", "line"]))
    return Invoice.of(lines, status, rounding, draw(MODES))


def per_rate(taxes: list[TaxAmount]) -> dict[cns.Key, cns.Sums]:
    out: dict[cns.Key, cns.Sums] = {}
    for t in taxes:
        out[cns.key(t)] = out.get(cns.key(t), cns.ZERO) + t
    return out


@settings(max_examples=300, deadline=None)
@given(invoices(), st.booleans(), st.data())
def test_notes_that_credit_everything_reverse_exactly_the_invoices_taxes(
    inv: Invoice, finish_by_amount: bool, data: st.DataObject
) -> None:
    for _ in range(data.draw(st.integers(0, 4))):  # partial notes, by lines
        left = {p: a for p, a in inv.left().items() if a > 0}
        if not left:
            break
        positions = data.draw(st.lists(st.sampled_from(sorted(left)), min_size=1, unique=True))
        note = inv.by_lines(*[(p, data.draw(st.integers(1, left[p]))) for p in positions])
        for ln in note.lines:
            assert ln.line is not None
            line = inv.lines[ln.line]
            if line.inclusive:  # tax included: net + tax = what it took off the line
                assert all(t.taxable_amount + ln.tax == ln.line_amount for t in ln.taxes)
        # the notes of a line never reverse more of a rate than the line carried
        for line in inv.lines:
            on = [t for n in inv.notes for ln in n.lines if ln.line == line.position
                  for t in ln.taxes]  # fmt: skip
            for k, s in per_rate(on).items():
                (carried,) = [t for t in line.taxes if cns.key(t) == k]
                assert 0 <= s.tax <= carried.tax
                # (between 0 and the line's: rounded up, a tiny inclusive line's net and
                # base can be negative)
                assert (
                    min(0, carried.taxable_base) <= s.taxable_base <= max(0, carried.taxable_base)
                )
    if finish_by_amount:
        if inv.remaining() > 0:
            inv.by_amount(inv.remaining())
    else:
        rest = [(p, a) for p, a in inv.left().items() if a > 0]
        if rest:
            inv.by_lines(*rest)
    assert inv.remaining() == 0
    # every rate: exactly the invoice's taxable amount, base and tax
    assert per_rate([t for n in inv.notes for t in n.breakdown]) == per_rate(inv.breakdown)
    for n in inv.notes:
        assert n.tax == sum(t.tax for t in n.breakdown) == sum(ln.tax for ln in n.lines)
        assert n.total == n.subtotal + n.tax


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**7), st.integers(0, 10**7), RATE_SETS, MODES, st.data())
def test_prepaid_credits_before_tax_still_reverse_exactly(
    amount: int, credit: int, rates: tuple[Rate, ...], mode: str, data: st.DataObject
) -> None:
    # credits before tax lower the taxed amount; crediting the line in pieces still
    # reverses exactly what the invoice taxed
    credit = min(credit, amount)
    lines = [charge(amount, *rates), charge(-credit, kind="credit", grant_id="g")]
    inv = Invoice.of(lines, mode=mode, before_tax=True)
    for _ in range(data.draw(st.integers(0, 3))):
        if (left := inv.left()[0]) > 0:
            inv.by_lines((0, data.draw(st.integers(1, left))))
    if (left := inv.left()[0]) > 0:
        inv.by_lines((0, left))  # the rest of the line
    credited = per_rate([t for n in inv.notes for t in n.breakdown])
    assert credited == per_rate(inv.breakdown)
    assert inv.remaining() == 0
