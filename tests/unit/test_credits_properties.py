"""Prepaid credits, pure: the allocator against a unit-by-unit reference written here
independently, its invariants, the documented order by hand, and invoice totals with
credit lines (Σ lines + tax = total; credits never make a total negative)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.invoicing import service
from workers.invoicing.credits import Grant, Payable, allocate, credit_line, order

FAST = settings(max_examples=300, deadline=None)
T0 = datetime(2031, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)

PRICES = ("base", "calls", "seats")
METERS = ("calls", "storage")
IDS = ("g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8")


# --- strategies ------------------------------------------------------------------------


@st.composite
def scopes(draw: st.DrawFn) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """No scope, or a scope as ``credits.scope_of`` gives it (both sets, one not empty)."""
    if draw(st.booleans()):
        return None, None
    prices = draw(st.frozensets(st.sampled_from(PRICES)))
    meters = draw(st.frozensets(st.sampled_from(METERS), min_size=0 if prices else 1))
    return prices, meters


@st.composite
def grants(draw: st.DrawFn) -> list[Grant]:
    """Up to 8 grants with distinct ids; priorities, expiries and start dates often tie so
    that every step of the order is exercised."""
    ids = draw(st.lists(st.sampled_from(IDS), max_size=len(IDS), unique=True))
    out = []
    for id in ids:
        prices, meters = draw(scopes())
        out.append(
            Grant(
                id=id,
                priority=draw(st.integers(0, 100) | st.sampled_from([0, 50, 100])),
                effective_at=T0 - draw(st.integers(0, 3)) * DAY,
                expires_at=draw(st.none() | st.integers(1, 4).map(lambda d: T0 + d * DAY)),
                balance=draw(st.integers(0, 500)),
                prices=prices,
                meters=meters,
            )
        )
    return out


LINES = st.builds(
    Payable,
    amount=st.integers(-200, 500),
    price_key=st.sampled_from(PRICES),
    meter=st.none() | st.sampled_from(METERS),
)


@st.composite
def payables(draw: st.DrawFn) -> list[Payable]:
    """Invoice lines, then (sometimes) the tax, as ``ledger.Wallet.pay`` builds them."""
    out = draw(st.lists(LINES, max_size=6))
    if draw(st.booleans()):
        out.append(Payable(draw(st.integers(-40, 100))))
    return out


# --- an independent reference ----------------------------------------------------------


def _cmp(a: Grant, b: Grant) -> int:
    """The documented order, spelled out: lower priority first; then the earlier expiry,
    a grant that never expires after every one that does; then the older effective_at;
    then the id."""
    if a.priority != b.priority:
        return -1 if a.priority < b.priority else 1
    if a.expires_at != b.expires_at:
        if a.expires_at is None:
            return 1
        if b.expires_at is None:
            return -1
        return -1 if a.expires_at < b.expires_at else 1
    if a.effective_at != b.effective_at:
        return -1 if a.effective_at < b.effective_at else 1
    if a.id != b.id:
        return -1 if a.id < b.id else 1
    return 0


def _may_pay(g: Grant, p: Payable) -> bool:
    unscoped = g.prices is None and g.meters is None
    if p.price_key is None:  # the tax: only a grant without a scope pays it
        return unscoped
    if unscoped:
        return True
    return p.price_key in (g.prices or frozenset()) or (
        p.meter is not None and p.meter in (g.meters or frozenset())
    )


def reference(gs: list[Grant], ps: list[Payable]) -> dict[str, int]:
    """One minor unit at a time, grant by grant in the documented order: a grant takes a
    unit while it has balance, some payable in its scope still has a positive remainder,
    what is left of its scope as a whole is positive (a negative line in its scope, a
    discount or a late-usage correction, reduces what it may pay) and what is left of the
    whole invoice is positive. The unit comes off the first such payable."""
    left = [p.amount for p in ps]
    taken: dict[str, int] = {}
    for g in sorted(gs, key=functools.cmp_to_key(_cmp)):
        mine = [i for i, p in enumerate(ps) if _may_pay(g, p)]
        balance = g.balance
        while balance > 0 and sum(left) > 0 and sum(left[i] for i in mine) > 0:
            i = next((i for i in mine if left[i] > 0), None)
            if i is None:
                break
            left[i] -= 1
            balance -= 1
            taken[g.id] = taken.get(g.id, 0) + 1
    return taken


# --- the allocator ---------------------------------------------------------------------


@FAST
@given(grants(), payables())
def test_allocate_takes_what_the_unit_by_unit_reference_takes(
    gs: list[Grant], ps: list[Payable]
) -> None:
    paid = allocate(gs, ps)
    assert len({g.id for g, _ in paid}) == len(paid), "a grant appears twice"
    assert {g.id: amount for g, amount in paid} == reference(gs, ps)


@FAST
@given(grants(), payables())
def test_allocate_never_takes_more_than_it_may(gs: list[Grant], ps: list[Payable]) -> None:
    paid = allocate(gs, ps)
    by_id = {g.id: g for g in gs}
    for g, amount in paid:
        assert g == by_id[g.id]
        assert 0 < amount <= g.balance
        if g.scoped:
            mine = [p for p in ps if p.price_key is not None and g.may_pay(p.price_key, p.meter)]
            assert amount <= max(0, sum(p.amount for p in mine))
            # never the tax: what it takes fits in the lines of its scope alone
            assert amount <= sum(max(p.amount, 0) for p in mine)
    assert sum(a for _, a in paid) <= max(0, sum(p.amount for p in ps))


@FAST
@given(grants(), payables(), st.integers(-40, 10_000))
def test_a_scoped_grant_never_pays_the_tax(gs: list[Grant], ps: list[Payable], tax: int) -> None:
    """To scoped grants the tax is just a line none of them may pay: they take the same
    with it as with a line of a price outside every scope, and what they take together fits
    in the positive lines of their scopes."""
    scoped = [g for g in gs if g.scoped]
    lines = [p for p in ps if p.price_key is not None]
    with_tax = allocate(scoped, [*lines, Payable(tax)])
    assert with_tax == allocate(scoped, [*lines, Payable(tax, "outside-every-scope")])
    payable = [p for p in lines if any(g.may_pay(p.price_key or "", p.meter) for g in scoped)]
    assert sum(a for _, a in with_tax) <= sum(max(p.amount, 0) for p in payable)


def test_a_negative_line_in_a_scope_reduces_what_the_grant_may_pay() -> None:
    """By hand: calls 100, a late-usage correction of calls -80, base 50. A grant scoped to
    calls pays the calls' net 20, never 100 (that would pay 80 of the base fee); an
    unscoped grant then pays the base fee's 50."""
    calls = Grant("calls-only", 0, T0, None, 1_000, frozenset({"calls"}), frozenset())
    anything = Grant("any", 1, T0, None, 1_000)
    ps = [Payable(100, "calls", "calls"), Payable(-80, "calls", "calls"), Payable(50, "base")]
    assert [(g.id, a) for g, a in allocate([calls, anything], ps)] == [
        ("calls-only", 20),
        ("any", 50),
    ]


def test_the_documented_order_by_hand() -> None:
    """Priority first; then the earliest expiry (never-expiring last); then the oldest
    effective_at; then the id. Each grant holds 10 of an invoice of 35."""
    jan, feb, mar = (datetime(2031, m, 1, tzinfo=UTC) for m in (1, 2, 3))
    dec = datetime(2030, 12, 1, tzinfo=UTC)
    old = datetime(2030, 1, 1, tzinfo=UTC)
    gs = [
        Grant("a", 10, jan, mar, 10),
        Grant("never", 10, old, None, 10),  # oldest, but never expires: last of priority 10
        Grant("b", 10, jan, mar, 10),  # ties with "a" up to the id
        Grant("feb", 10, jan, feb, 10),  # expires first
        Grant("z-older", 10, dec, mar, 10),  # same expiry as "a", older
        Grant("top", 0, jan, None, 10),  # priority 0 before everything
    ]
    expected = ["top", "feb", "z-older", "a", "b", "never"]
    assert [g.id for g in sorted(gs, key=order)] == expected
    assert [g.id for g in sorted(gs, key=functools.cmp_to_key(_cmp))] == expected
    paid = allocate(gs, [Payable(35, "base")])
    assert [(g.id, a) for g, a in paid] == [("top", 10), ("feb", 10), ("z-older", 10), ("a", 5)]


@FAST
@given(grants())
def test_order_agrees_with_the_spelled_out_comparison(gs: list[Grant]) -> None:
    assert [g.id for g in sorted(gs, key=order)] == [
        g.id for g in sorted(gs, key=functools.cmp_to_key(_cmp))
    ]


# --- invoice totals with credit lines --------------------------------------------------


@dataclass(frozen=True)
class Invoice:
    lines: list[service.Line]
    tax_rate: Decimal | None
    currency: str
    rounding: str


def _line(p: Payable) -> service.Line:
    assert p.price_key is not None
    return service.Line(
        price_key=p.price_key,
        kind="usage" if p.meter else "flat",
        description=p.price_key,
        meter=p.meter,
        subject=None,
        period_start=T0,
        period_end=T0 + 30 * DAY,
        quantity=Decimal(1),
        unit_price=None,
        tiers=(),
        proration=Decimal(1),
        minimum_applied=False,
        amount=p.amount,
    )


INVOICES = st.builds(
    Invoice,
    lines=st.lists(LINES.map(_line), max_size=6),
    tax_rate=st.none() | st.sampled_from([Decimal(0), Decimal("0.075"), Decimal("0.19")]),
    currency=st.sampled_from(["JPY", "USD", "KWD"]),
    rounding=st.sampled_from(sorted(service.ROUNDING)),
)


def _credit_lines(inv: Invoice, gs: list[Grant], mode: str) -> list[service.Line]:
    """What ``ledger.Wallet.pay`` does: the lines, and after tax the tax of the subtotal,
    are what credits may pay; one credit line per grant that paid."""
    ps = [Payable(ln.amount, ln.price_key, ln.meter) for ln in inv.lines]
    if mode == service.AFTER_TAX:
        subtotal = sum(ln.amount for ln in inv.lines)
        ps.append(Payable(service.taxed(subtotal, inv.tax_rate, inv.currency, inv.rounding)))
    return [credit_line(g.id, None, amount, T0, T0 + 30 * DAY) for g, amount in allocate(gs, ps)]


@FAST
@given(INVOICES, grants(), st.sampled_from([service.AFTER_TAX, service.BEFORE_TAX]))
def test_lines_and_tax_sum_to_the_total_and_credits_never_make_it_negative(
    inv: Invoice, gs: list[Grant], mode: str
) -> None:
    credit = _credit_lines(inv, gs, mode)
    lines = inv.lines + credit
    t = service.totals(lines, inv.tax_rate, inv.currency, inv.rounding, mode)
    assert sum(ln.amount for ln in lines) + t.tax == t.total
    assert t.subtotal == sum(ln.amount for ln in inv.lines)
    assert t.credits == -sum(ln.amount for ln in credit) >= 0
    assert all(ln.amount < 0 and ln.grant_id is not None for ln in credit)
    before = service.totals(inv.lines, inv.tax_rate, inv.currency, inv.rounding, mode)
    if credit:
        assert t.total >= 0
        if mode == service.AFTER_TAX:  # credits pay the total like a payment
            assert (t.tax, t.total) == (before.tax, before.total - t.credits)
            assert t.credits <= before.total
        else:  # credits reduce what is taxed
            assert t.credits <= before.subtotal
            assert t.tax == service.taxed(
                t.subtotal - t.credits, inv.tax_rate, inv.currency, inv.rounding
            )
    else:
        assert t == before


def test_totals_with_credits_by_hand_in_currencies_of_exponent_0_2_and_3() -> None:
    """One grant of 600 (unscoped) against lines 1,000 + 500 at 10 % tax, half-even:
    after tax: tax 150, credits 600, total 1,500 - 600 + 150 = 1,050; before tax: taxed
    1,500 - 600 = 900, tax 90, total 990. The same minor units in JPY, USD and KWD."""
    g = Grant("g", 0, T0, None, 600)
    ps = [Payable(1_000, "base"), Payable(500, "calls", "calls")]
    for currency in ("JPY", "USD", "KWD"):
        inv = Invoice([_line(p) for p in ps], Decimal("0.1"), currency, "half_even")
        for mode, (tax, total) in {
            service.AFTER_TAX: (150, 1_050),
            service.BEFORE_TAX: (90, 990),
        }.items():
            lines = inv.lines + _credit_lines(inv, [g], mode)
            t = service.totals(lines, inv.tax_rate, currency, "half_even", mode)
            assert (t.subtotal, t.credits, t.tax, t.total) == (1_500, 600, tax, total)
