"""A ledger that is never wrong: random sequences of credit operations for one customer,
driven through the invoicing code itself (its commands, ``Billing.finalize`` and the
expiry) in real PostgreSQL transactions, with the ledger read back by plain SQL after every
step. No broker: commands are handled as the worker handles them, one ``Tx`` each."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select, text

from schemas.credits import CreditGrantSpec, CreditScope, GrantCredits, VoidCreditGrant
from schemas.envelope import CloudEvent
from schemas.invoicing import ConfigureInvoicing, InvoiceActionSpec, InvoicingConfig, VoidInvoice
from schemas.pricing import PlanSpec
from storage.db import Sessions
from storage.invoicing import Customer, Invoice, InvoicingRepository, Plan, Subscription
from storage.invoicing.credits import CreditRepository
from tests.conftest import TenantKey
from workers.invoicing import commands, jobs, ledger, service
from workers.invoicing.credit_jobs import EXPIRE
from workers.invoicing.credit_views import credit_balances
from workers.invoicing.errors import Conflict, InvalidTransition
from workers.invoicing.lines import PLANS
from workers.runtime import Jobs

T0 = datetime(2031, 1, 1, tzinfo=UTC)  # the clock of each sequence starts here
ANCHOR = datetime(2030, 1, 1, tzinfo=UTC)  # invoiced periods: monthly from here
HOUR = timedelta(hours=1)
PRICES = ("base", "seats")

# --- a sequence of operations ------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    amount: int
    priority: int
    starts_in_h: int | None  # None: effective when granted
    lasts_h: int | None  # None: never expires
    scope: tuple[str, ...] | None


@dataclass(frozen=True)
class Finalize:
    plan: int  # which of the sequence's plans the invoiced period is on


@dataclass(frozen=True)
class VoidAnInvoice:
    pick: int


@dataclass(frozen=True)
class VoidAGrant:
    pick: int


@dataclass(frozen=True)
class Expire:
    pass


Op = Grant | Finalize | VoidAnInvoice | VoidAGrant | Expire

OPS: st.SearchStrategy[Op] = st.one_of(
    st.builds(
        Grant,
        amount=st.integers(1, 3_000),
        priority=st.sampled_from([0, 10, 50, 100]),
        starts_in_h=st.none() | st.integers(-48, 72),
        lasts_h=st.none() | st.integers(1, 240),
        scope=st.none() | st.sampled_from([("base",), ("seats",), ("calls",), PRICES]),
    ),
    st.builds(Finalize, plan=st.integers(0, 2)),
    st.builds(VoidAnInvoice, pick=st.integers(0, 20)),
    st.builds(VoidAGrant, pick=st.integers(0, 20)),
    st.just(Expire()),
)


@dataclass(frozen=True)
class Scenario:
    mode: str
    tax_rate: Decimal | None
    plans: list[tuple[int, int]]  # (base, seats) in cents, per plan
    steps: list[tuple[int, Op]]  # (hours the clock moves first, operation)


SCENARIOS = st.builds(
    Scenario,
    mode=st.sampled_from([service.AFTER_TAX, service.BEFORE_TAX]),
    tax_rate=st.sampled_from([None, Decimal("0.1"), Decimal("0.19")]),
    plans=st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 1_500)), min_size=3, max_size=3),
    steps=st.lists(st.tuples(st.integers(0, 96), OPS), min_size=4, max_size=18),
)


# --- driving the invoicing code --------------------------------------------------------


@dataclass
class World:
    sessions: Sessions
    tenant: str
    mode: str
    jobs: Jobs = field(init=False)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    now: datetime = T0
    customer_id: str = ""
    subscription_id: str = ""
    plan_ids: list[str] = field(default_factory=list)
    grant_ids: list[str] = field(default_factory=list)
    invoice_ids: list[str] = field(default_factory=list)
    periods: int = 0

    def __post_init__(self) -> None:
        self.jobs = Jobs(self.sessions, retry_initial_s=0.01, retry_max_s=0.1)

    @property
    def customer(self) -> str:
        return f"c-{self.tag}"

    async def command(self, cmd: CloudEvent) -> dict[str, Any]:
        async with self.jobs.transaction("tests.credits") as tx:
            return await commands.handle(cmd, tx)

    def envelope(self) -> dict[str, Any]:
        return {"source": "tests", "tenantid": self.tenant, "time": self.now}

    async def seed(self, tax_rate: Decimal | None, plans: list[tuple[int, int]]) -> None:
        self.customer_id, self.subscription_id = str(uuid.uuid4()), f"s-{self.tag}"
        self.plan_ids = [str(uuid.uuid4()) for _ in plans]
        specs = [
            PlanSpec.model_validate(
                {"key": f"p{i}-{self.tag}", "name": f"Plan {i}", "currency": "USD",
                 "interval": "month", "prices": [
                     {"kind": "flat", "key": "base", "name": "Base", "amount": str(base / 100)},
                     {"kind": "flat", "key": "seats", "name": "Seats",
                      "amount": str(seats / 100)},
                 ]}
            )
            for i, (base, seats) in enumerate(plans)
        ]  # fmt: skip
        start, end = service.period(ANCHOR, "month", 0)
        async with self.sessions() as session, session.begin():
            await session.execute(
                insert(Customer).values(
                    id=self.customer_id, tenant_id=self.tenant, external_id=self.customer,
                    name="Property", currency="USD", tax_rate=tax_rate, tax_exempt=False,
                    net_terms_days=30,
                )
            )  # fmt: skip
            for id, spec in zip(self.plan_ids, specs, strict=True):
                await session.execute(
                    insert(Plan).values(
                        id=id, tenant_id=self.tenant, key=spec.key, currency="USD",
                        interval="month", spec=spec.model_dump(mode="json"),
                    )
                )  # fmt: skip
            await session.execute(
                insert(Subscription).values(
                    tenant_id=self.tenant, id=self.subscription_id, customer_id=self.customer_id,
                    plan_id=self.plan_ids[0], status="active", start=ANCHOR, anchor=ANCHOR,
                    period_index=0, current_period_start=start, current_period_end=end,
                    cancel_at_period_end=False,
                )
            )  # fmt: skip
        await self.command(
            ConfigureInvoicing(**self.envelope(), data=InvoicingConfig(credits_apply=self.mode))
        )

    async def apply(self, op: Op) -> None:
        if isinstance(op, Grant):
            await self.grant(op)
        elif isinstance(op, Finalize):
            await self.finalize(op.plan)
        elif isinstance(op, VoidAnInvoice):
            await self.void_invoice(op.pick)
        elif isinstance(op, VoidAGrant):
            await self.void_grant(op.pick)
        else:
            async with self.jobs.transaction(EXPIRE) as tx:
                due = await tx.repo(CreditRepository).expiring(self.now, 1_000, job=EXPIRE)
                # the database is shared with other tests: expire this world's grants only
                await ledger.expire(tx, [g for g in due if g.tenant_id == self.tenant], self.now)

    async def grant(self, op: Grant) -> None:
        id = f"g-{self.tag}-{len(self.grant_ids)}"
        effective = None if op.starts_in_h is None else self.now + op.starts_in_h * HOUR
        expires = None if op.lasts_h is None else (effective or self.now) + op.lasts_h * HOUR
        scope = None if op.scope is None else CreditScope(prices=list(op.scope))
        spec = CreditGrantSpec(
            id=id, customer=self.customer, amount=op.amount, currency="USD",
            priority=op.priority, effective_at=effective, expires_at=expires, scope=scope,
        )  # fmt: skip
        result = await self.command(GrantCredits(**self.envelope(), data=spec))
        assert result["grant_id"] == id
        self.grant_ids.append(id)

    async def finalize(self, plan: int) -> None:
        start, end = service.period(ANCHOR, "month", self.periods)
        self.periods += 1
        async with self.jobs.transaction("tests.close") as tx:
            repo = tx.repo(InvoicingRepository)
            customer = (await repo.customers([self.customer_id]))[self.customer_id]
            [row] = (await repo.plans([self.plan_ids[plan]])).values()
            configs = await repo.configs({self.tenant})
            draft = (self.tenant, self.subscription_id, customer, row, start, end, Decimal(1), True)
            assert await jobs.create_drafts(tx, [draft], configs, plans=PLANS) == 1
        async with self.jobs.transaction(jobs.FINALIZE) as tx:
            invoice = await tx.session.scalar(
                select(Invoice)
                .where(Invoice.subscription_id == self.subscription_id)
                .where(Invoice.period_start == start)
                .with_for_update()
            )
            assert invoice is not None and invoice.status == "draft"
            billing = jobs.Billing(self.jobs, chunk=10, lookback=timedelta(days=60))
            assert await billing.finalize(tx, [invoice], self.now) == 1
        self.invoice_ids.append(invoice.id)

    async def void_invoice(self, pick: int) -> None:
        if not self.invoice_ids:
            return
        id = self.invoice_ids[pick % len(self.invoice_ids)]
        async with self.sessions() as session:
            status = await session.scalar(select(Invoice.status).where(Invoice.id == id))
        try:
            await self.command(
                VoidInvoice(**self.envelope(), data=InvoiceActionSpec(invoice_id=id))
            )
        except InvalidTransition:
            # void is final, and so is paid, unless credits alone paid it
            assert status in ("paid", "void"), status

    async def void_grant(self, pick: int) -> None:
        if not self.grant_ids:
            return
        id = self.grant_ids[pick % len(self.grant_ids)]
        # refused (Conflict) when applied to an invoice that stands or expired: nothing written
        with contextlib.suppress(Conflict):
            await self.command(VoidCreditGrant(**self.envelope(), data={"grant_id": id}))


# --- what must hold after every step ---------------------------------------------------


async def check(w: World) -> None:
    async with w.sessions() as session, session.begin():
        entries = (
            await session.execute(
                text(
                    "SELECT grant_id, kind, amount, at, invoice_id FROM credit_entries "
                    "WHERE tenant_id = :t AND customer_id = :c ORDER BY seq"
                ),
                {"t": w.tenant, "c": w.customer_id},
            )
        ).all()
        async with w.jobs.transaction("tests.read") as tx:
            credit = tx.repo(CreditRepository)
            invoicing = tx.repo(InvoicingRepository)
            grants = {g.id: g for g in await credit.grants(w.tenant, [w.customer_id])}
            assert set(grants) == set(w.grant_ids)
            sums: dict[str, int] = {g: 0 for g in grants}
            kinds: dict[str, set[str]] = {g: set() for g in grants}
            ended: set[str] = set()  # voided, or expired by the expiry job
            for e in entries:
                sums[e.grant_id] += e.amount
                kinds[e.grant_id].add(e.kind)
                if e.kind == "voided" or (e.kind == "expired" and e.invoice_id is None):
                    ended.add(e.grant_id)

            # each grant's balance is the sum of its entries, never negative, never more than
            # it granted, and nothing once it ended
            assert await credit.balances(w.tenant, grants) == {
                g: s for g, s in sums.items() if kinds[g]
            }
            for g, s in sums.items():
                assert 0 <= s <= grants[g].amount, (g, s, entries)
                # (credit an invoice returns after its grant ended expires with it at once:
                # an `expired` entry naming the invoice; what was left expires by the job)
                if g in ended:
                    assert s == 0, (g, entries)

            # ... and as of every time an entry counts from
            for t in sorted({e.at for e in entries} | {w.now}):
                as_of = {g: sum(e.amount for e in entries if e.grant_id == g and e.at <= t)
                         for g in grants}  # fmt: skip
                assert all(b >= 0 for b in as_of.values()), (t, as_of, entries)
                assert await credit.balances(w.tenant, grants, as_of=t) == {
                    g: b
                    for g, b in as_of.items()
                    if any(e.at <= t for e in entries if e.grant_id == g)
                }

            # the invoices: credits never more than what they were before credits
            issued = [
                inv
                for inv in [await invoicing.invoice(w.tenant, id) for id in w.invoice_ids]
                if inv is not None
            ]
            lines = await invoicing.lines([inv.id for inv in issued])
            for inv in issued:
                mine = lines[inv.id]
                credit_lines = [ln for ln in mine if ln.grant_id is not None]
                subtotal = sum(ln.amount for ln in mine if ln.grant_id is None)
                applied = {e.grant_id: -e.amount for e in entries
                           if e.invoice_id == inv.id and e.kind == "applied"}  # fmt: skip
                assert inv.subtotal == subtotal
                assert inv.credits == -sum(ln.amount for ln in credit_lines) >= 0
                assert {ln.grant_id: -ln.amount for ln in credit_lines} == applied
                assert sum(ln.amount for ln in mine) + inv.tax == inv.total
                taxed = service.taxed(subtotal, inv.tax_rate, "USD", inv.rounding)
                if w.mode == service.AFTER_TAX:
                    assert inv.tax == taxed
                    assert inv.credits <= max(0, subtotal + taxed)
                else:
                    assert inv.credits <= max(0, subtotal)
                    assert inv.tax == service.taxed(
                        subtotal - inv.credits, inv.tax_rate, "USD", inv.rounding
                    )
                if inv.credits:
                    assert inv.total >= 0
                for g, amount in applied.items():
                    grant = grants[g]
                    assert inv.finalized_at is not None
                    assert grant.effective_at <= inv.finalized_at
                    assert grant.expires_at is None or inv.finalized_at < grant.expires_at
                    if grant.scope:
                        prices = grant.scope["prices"]
                        scoped = [
                            ln.amount
                            for ln in mine
                            if ln.grant_id is None and ln.price_key in prices
                        ]
                        assert amount <= max(0, sum(scoped))
                returned = sum(
                    e.amount
                    for e in entries
                    if e.invoice_id == inv.id and e.kind in ("applied", "reversed")
                )
                assert returned == (0 if inv.status == "void" else -inv.credits), inv.status

            # credit_balances agrees with the ledger
            customer = (await invoicing.customers([w.customer_id]))[w.customer_id]
            [view] = await credit_balances(tx, [customer], w.now)
            shown = {g.grant_id: g for g in view.grants}
            assert set(shown) == set(grants)
            for g, v in shown.items():
                row = grants[g]
                b = sum(e.amount for e in entries if e.grant_id == g and e.at <= w.now)
                ended = "expired" in kinds[g] or (
                    row.expires_at is not None and row.expires_at <= w.now
                )
                if "voided" in kinds[g]:
                    state = "voided"
                elif ended:
                    state = "expired"
                elif row.effective_at > w.now:
                    state = "scheduled"
                else:
                    state = "active" if b > 0 else "depleted"
                assert (v.status, v.balance) == (state, 0 if state == "expired" else b), (
                    g,
                    entries,
                )
            assert view.balance == sum(v.balance for v in view.grants) >= 0


# --- the property ----------------------------------------------------------------------


@settings(
    max_examples=15,
    deadline=None,
    database=None,
    derandomize=True,  # the same sequences every run: a failure is a regression, not luck
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=SCENARIOS)
async def test_the_credit_ledger_is_never_wrong(
    sessions: Sessions, tenant: TenantKey, scenario: Scenario
) -> None:
    w = World(sessions, tenant.tenant_id, scenario.mode)
    await w.seed(scenario.tax_rate, scenario.plans)
    for hours, op in scenario.steps:
        w.now += hours * HOUR
        await w.apply(op)
        await check(w)


async def test_voiding_a_grant_before_it_takes_effect_leaves_no_negative_balance(
    sessions: Sessions, tenant: TenantKey
) -> None:
    w = World(sessions, tenant.tenant_id, service.AFTER_TAX)
    await w.seed(None, [(1_000, 0)])
    await w.apply(Grant(amount=500, priority=50, starts_in_h=24, lasts_h=None, scope=None))
    await w.apply(VoidAGrant(0))
    await check(w)
