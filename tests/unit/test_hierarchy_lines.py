"""Consolidated invoices (docs/hierarchies.md), pure: a payer's subscription invoice bills its
own lines as before, then a section per customer invoiced to it — one line per metered price
of the plan, priced on that customer's usage alone (``service.invoice_lines``), and late
usage adjusted per section (``service.adjustments``)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.pricing import (
    FlatPrice,
    GraduatedPrice,
    MeteredPrice,
    PerUnitPrice,
    PlanSpec,
    Price,
    Tier,
    VolumePrice,
)
from workers.invoicing import service

D = Decimal
OCT = datetime(2031, 10, 1, tzinfo=UTC)
NOV = datetime(2031, 11, 1, tzinfo=UTC)
FAST = settings(max_examples=80, deadline=None)

PLAN = PlanSpec(
    key="team",
    name="Team",
    currency="USD",
    interval="month",
    prices=[
        FlatPrice(key="base", name="Team plan", amount=D("100.00")),
        PerUnitPrice(
            key="tokens",
            name="Tokens",
            meter="tokens",
            unit_price=D("0.05"),
            included_quantity=D(100),
        ),
        GraduatedPrice(
            key="calls",
            name="API calls",
            meter="calls",
            tiers=[
                Tier(up_to=D(10), unit_price=D("0.50")),
                Tier(up_to=None, unit_price=D("0.10")),
            ],
        ),
    ],
)


def context(
    plan: PlanSpec,
    subject: str = "parent",
    sections: tuple[str, ...] = (),
    proration: Decimal = D(1),
    usage_billed: bool = True,
) -> service.InvoiceContext:
    return service.InvoiceContext(
        plan=plan,
        subject=subject,
        currency=plan.currency,
        period_start=OCT,
        period_end=NOV,
        proration=proration,
        rounding="half_even",
        usage_billed=usage_billed,
        sections=sections,
    )


def test_a_consolidated_invoice_by_hand() -> None:
    ctx = context(PLAN, sections=("agency-a", "agency-b"))
    usage = {"tokens": D(1000), "calls": D(14)}
    section_usage: dict[tuple[str, str], Decimal | None] = {
        ("agency-a", "tokens"): D(150),
        ("agency-a", "calls"): D(3),
        ("agency-b", "tokens"): D(80),  # within the 100 included; no calls at all
    }
    lines = service.invoice_lines(ctx, usage, section_usage)
    got = [(ln.price_key, ln.subject, ln.quantity, ln.amount) for ln in lines]
    assert got == [
        ("base", None, D(1), 100_00),  # the flat fee once, in the payer's part
        ("tokens", "parent", D(1000), 45_00),  # (1000 - 100) x 0.05
        ("calls", "parent", D(14), 5_40),  # 10 x 0.50 + 4 x 0.10
        ("tokens", "agency-a", D(150), 2_50),  # its own 100 included: 50 x 0.05
        ("calls", "agency-a", D(3), 1_50),  # its own first tier: 3 x 0.50
        ("tokens", "agency-b", D(80), 0),
        ("calls", "agency-b", D(0), 0),
    ]
    assert sum(ln.amount for ln in lines) == 154_40
    # the sections' tiers restart: agency-a's 3 calls are all at 0.50, not at 0.10 after
    # the payer's 14
    [calls_a] = [ln for ln in lines if (ln.price_key, ln.subject) == ("calls", "agency-a")]
    assert [(p.quantity, p.unit_price) for p in calls_a.tiers] == [(D(3), D("0.50"))]
    # taxed as one invoice: 10 % of 154.40
    t = service.totals(lines, D("0.1"), "USD", "half_even")
    assert (t.subtotal, t.tax, t.total) == (154_40, 15_44, 169_84)


def test_without_sections_the_lines_are_those_of_before() -> None:
    usage = {"tokens": D(1000), "calls": D(14)}
    assert service.invoice_lines(context(PLAN), usage, {}) == service.invoice_lines(
        context(PLAN), usage
    )
    # usage of other customers is not billed unless they are sections of the invoice
    assert service.invoice_lines(
        context(PLAN), usage, {("agency-a", "tokens"): D(10**6)}
    ) == service.invoice_lines(context(PLAN), usage)


def test_a_trials_sections_show_usage_billed_at_zero() -> None:
    ctx = context(PLAN, sections=("agency-a",), usage_billed=False)
    lines = service.invoice_lines(ctx, {"tokens": D(500)}, {("agency-a", "tokens"): D(900)})
    section = [ln for ln in lines if ln.subject == "agency-a"]
    assert [(ln.quantity, ln.amount) for ln in section] == [(D(900), 0), (D(0), 0)]


def test_late_usage_of_a_section_is_adjusted_in_that_section() -> None:
    tokens = PLAN.prices[1]
    assert isinstance(tokens, PerUnitPrice)
    start, end = service.usage_window(OCT, NOV)
    # October billed: the payer 1000 tokens (45.00), agency-a 150 (2.50)
    billed = [
        service.Billed(context(PLAN), tokens, start, end, quantity=D(1000), amount=45_00),
        service.Billed(context(PLAN, "agency-a"), tokens, start, end, D(150), 2_50),
    ]
    # now: the payer unchanged, agency-a 150 + 61 = 211 -> 111 x 0.05 = 5.55: +3.05
    [line] = service.adjustments(billed, [D(1000), D(211)], "USD")
    assert (line.subject, line.quantity, line.amount) == ("agency-a", D(61), 3_05)
    assert line.adjustment_for == "2031-10-01T00:00Z/2031-11-01T00:00Z"


# --- properties ------------------------------------------------------------------------

quantities = st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False)
money = st.decimals(min_value=D("0.001"), max_value=D(50), places=3, allow_nan=False)


@st.composite
def metered_price(draw: st.DrawFn, key: str) -> MeteredPrice:
    meter = draw(st.sampled_from(["tokens", "calls"]))
    included = draw(st.sampled_from([D(0), D(100)]))
    minimum = draw(st.none() | st.sampled_from([D(5), D("12.34")]))
    first = draw(st.integers(min_value=1, max_value=1000))
    rows = [
        Tier(up_to=D(first), unit_price=draw(money)),
        Tier(up_to=None, unit_price=draw(money)),
    ]
    kind = draw(st.sampled_from(["per_unit", "graduated", "volume"]))
    if kind == "per_unit":
        return PerUnitPrice(
            key=key,
            name=key,
            meter=meter,
            unit_price=draw(money),
            included_quantity=included,
            minimum_spend=minimum,
        )
    cls = GraduatedPrice if kind == "graduated" else VolumePrice
    return cls(
        key=key,
        name=key,
        meter=meter,
        tiers=rows,
        included_quantity=included,
        minimum_spend=minimum,
    )


@st.composite
def plans(draw: st.DrawFn) -> PlanSpec:
    prices: list[Price] = []
    for i in range(draw(st.integers(min_value=0, max_value=2))):
        prices.append(FlatPrice(key=f"flat{i}", name=f"flat{i}", amount=draw(money)))
    for i in range(draw(st.integers(min_value=1, max_value=3))):
        prices.append(draw(metered_price(f"metered{i}")))
    currency = draw(st.sampled_from(["USD", "JPY", "KWD"]))
    return PlanSpec(key="p", name="p", currency=currency, interval="month", prices=prices)


@FAST
@given(
    plan=plans(),
    sections=st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, max_size=4).map(tuple),
    usage=st.dictionaries(st.sampled_from(["tokens", "calls"]), quantities | st.none()),
    section_usage=st.dictionaries(
        st.tuples(st.sampled_from(["a", "b", "c", "d", "x"]), st.sampled_from(["tokens", "calls"])),
        quantities | st.none(),
    ),
    proration=st.sampled_from([D(1), D("0.5"), D("0.333333333333")]),
)
def test_each_section_is_billed_as_that_customer_alone_and_flat_fees_once(
    plan: PlanSpec,
    sections: tuple[str, ...],
    usage: dict[str, Decimal | None],
    section_usage: dict[tuple[str, str], Decimal | None],
    proration: Decimal,
) -> None:
    ctx = context(plan, sections=sections, proration=proration)
    lines = service.invoice_lines(ctx, usage, section_usage)
    own = service.invoice_lines(context(plan, proration=proration), usage)
    assert lines[: len(own)] == own  # the payer's part: exactly its invoice of before
    metered = service.metered_prices(plan)
    rest = lines[len(own) :]
    assert len(rest) == len(sections) * len(metered)
    for i, subject in enumerate(sections):
        alone_usage = {m: v for (s, m), v in section_usage.items() if s == subject}
        alone = service.invoice_lines(context(plan, subject, proration=proration), alone_usage)
        expected = [ln for ln in alone if ln.meter is not None]
        assert rest[i * len(metered) : (i + 1) * len(metered)] == expected
    flats = [ln for ln in lines if ln.meter is None]
    assert [ln.price_key for ln in flats] == [
        p.key for p in plan.prices if isinstance(p, FlatPrice)
    ]
    assert {ln.subject for ln in rest} == set(sections)
