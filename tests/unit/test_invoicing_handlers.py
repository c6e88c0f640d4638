"""Invoicing's command table, payment handlers and billing steps, run in memory: a MemoryTx
with fake repositories (no broker, no database). Amounts are worked out by hand in the
comments: plan "pro" is EUR 30.00 a month plus EUR 0.002 a call over 1,000 calls; the
customer pays 19 % tax."""

from __future__ import annotations

import typing
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from schemas.envelope import CloudEvent
from schemas.invoicing import (
    BillingRunSpec,
    CancelSpec,
    CancelSubscription,
    ChangeSubscriptionPlan,
    ConfigureInvoicing,
    CreatePlan,
    CreateSubscription,
    CustomerSpec,
    InvoiceActionSpec,
    InvoicingCommand,
    InvoicingConfig,
    MarkInvoiceUncollectible,
    PlanChangeSpec,
    RunBilling,
    SubscriptionSpec,
    UpsertCustomer,
    VoidInvoice,
)
from schemas.payments import (
    DunningData,
    DunningExhausted,
    PaymentData,
    PaymentRefunded,
    PaymentSucceeded,
    RefundData,
)
from schemas.pricing import PlanSpec
from storage.invoicing import (
    BillingRun,
    Customer,
    Invoice,
    InvoiceLineRow,
    InvoicingConfigRow,
    InvoicingRepository,
    Plan,
    Subscription,
)
from storage.invoicing.credit_notes import CreditNoteRepository
from storage.invoicing.credits import CreditRepository
from storage.invoicing.discounts import DiscountRepository
from storage.invoicing.hierarchy import HierarchyRepository
from storage.invoicing.taxes import TaxRateRepository
from storage.metering import MeterRepository, UsageRepository
from workers.invoicing import handlers, jobs
from workers.invoicing.commands import COMMANDS
from workers.runtime.memory import MemoryTx, message

T = "acme"
NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
PRO = PlanSpec.model_validate(
    {
        "key": "pro",
        "name": "Pro",
        "currency": "EUR",
        "interval": "month",
        "prices": [
            {"kind": "flat", "key": "base", "name": "Pro", "amount": "30"},
            {"kind": "per_unit", "key": "calls", "name": "API calls", "meter": "calls",
             "unit_price": "0.002", "included_quantity": "1000"},
        ],
    }
)  # fmt: skip
MAX = PRO.model_copy(update={"key": "max"})
ALICE = CustomerSpec(
    external_id="alice", name="Alice", currency="EUR", tax_rate=Decimal("0.19"), net_terms_days=14
)


# --- fakes ------------------------------------------------------------------------------


class FakeInvoicing:
    """The invoicing repository in memory: the methods the handlers and jobs use."""

    def __init__(self) -> None:
        self.customers_: dict[str, Customer] = {}
        self.plans_: dict[str, Plan] = {}
        self.subs: dict[tuple[str, str], Subscription] = {}
        self.invoices: dict[str, Invoice] = {}
        self.lines_: dict[str, list[InvoiceLineRow]] = {}
        self.payments_: dict[tuple[str, str], dict[str, Any]] = {}
        self.runs: dict[tuple[str, str], BillingRun] = {}
        self.configs_: dict[str, InvoicingConfigRow] = {}
        self.numbers: dict[tuple[str, int], int] = {}
        self.updated_subscriptions: list[dict[str, Any]] = []

    # customers
    async def customer(self, tenant_id: str, external_id: str) -> Customer | None:
        return next(
            (c for c in self.customers_.values()
             if (c.tenant_id, c.external_id) == (tenant_id, external_id)),
            None,
        )  # fmt: skip

    async def customers(self, ids: Iterable[str]) -> dict[str, Customer]:
        return {i: self.customers_[i] for i in ids if i in self.customers_}

    async def add_customer(self, id: str, tenant_id: str, columns: dict[str, Any]) -> Customer:
        self.customers_[id] = Customer(id=id, tenant_id=tenant_id, **columns)
        return self.customers_[id]

    async def update_customer(self, c: Customer, columns: dict[str, Any], at: datetime) -> None:
        for k, v in columns.items():
            setattr(c, k, v)
        c.updated_at = at

    async def has_live_subscriptions(self, tenant_id: str, customer_id: str) -> bool:
        return any(
            s.customer_id == customer_id and s.status == "active" for s in self.subs.values()
        )

    # plans
    async def plan(self, tenant_id: str, key: str) -> Plan | None:
        return next(
            (p for p in self.plans_.values() if (p.tenant_id, p.key) == (tenant_id, key)), None
        )

    async def plans(self, ids: Iterable[str]) -> dict[str, Plan]:
        return {i: self.plans_[i] for i in ids if i in self.plans_}

    async def add_plan(
        self, id: str, tenant_id: str, key: str, currency: str, interval: str, spec: Any
    ) -> Plan | None:
        existing = await self.plan(tenant_id, key)
        if existing is not None:
            return existing
        self.plans_[id] = Plan(
            id=id, tenant_id=tenant_id, key=key, currency=currency, interval=interval, spec=spec
        )
        return None

    # subscriptions
    async def subscription(
        self, tenant_id: str, id: str, *, lock: bool = False
    ) -> Subscription | None:
        return self.subs.get((tenant_id, id))

    async def overlapping(self, tenant_id: str, customer_id: str, plan_id: str) -> str | None:
        return next(
            (s.id for s in self.subs.values()
             if s.customer_id == customer_id and s.status == "active"
             and plan_id in (s.plan_id, s.next_plan_id)),
            None,
        )  # fmt: skip

    async def add_subscription(self, **columns: Any) -> Subscription:
        sub = Subscription(**columns)
        self.subs[(sub.tenant_id, sub.id)] = sub
        return sub

    async def cancel_at_period_end(self, sub: Subscription) -> None:
        sub.cancel_at_period_end = True

    async def end_subscription(self, sub: Subscription, at: datetime) -> None:
        sub.status, sub.ended_at, sub.current_period_end, sub.next_plan_id = "ended", at, at, None

    async def set_next_plan(self, sub: Subscription, plan_id: str | None) -> None:
        sub.next_plan_id = plan_id

    async def update_subscriptions(self, rows: Sequence[dict[str, Any]]) -> None:
        self.updated_subscriptions += rows
        for row in rows:
            sub = self.subs[(row["tenant_id"], row["id"])]
            for k, v in row.items():
                setattr(sub, k, v)

    # config
    async def configs(self, tenant_ids: Iterable[str]) -> dict[str, InvoicingConfigRow]:
        return {t: self.configs_[t] for t in tenant_ids if t in self.configs_}

    async def set_config(self, tenant_id: str, values: dict[str, Any]) -> None:
        self.configs_[tenant_id] = InvoicingConfigRow(tenant_id=tenant_id, **values)

    # invoices
    async def insert_invoices(
        self, invoices: Sequence[dict[str, Any]], lines: Sequence[dict[str, Any]]
    ) -> set[str]:
        inserted = set()
        for row in invoices:
            period = (row["tenant_id"], row["subscription_id"], row["period_start"])
            if any(
                (i.tenant_id, i.subscription_id, i.period_start) == period
                for i in self.invoices.values()
            ):
                continue
            self.invoices[row["id"]] = Invoice(**row, amount_refunded=0)
            inserted.add(row["id"])
        await self.replace_lines(
            list(inserted), [ln for ln in lines if ln["invoice_id"] in inserted]
        )
        return inserted

    async def delete_drafts(self, ids: Sequence[str]) -> None:
        for i in ids:
            if self.invoices[i].status == "draft":
                del self.invoices[i]
                self.lines_.pop(i, None)

    async def replace_lines(self, ids: Sequence[str], lines: Sequence[dict[str, Any]]) -> None:
        for i in ids:
            self.lines_[i] = [InvoiceLineRow(**ln) for ln in lines if ln["invoice_id"] == i]

    async def update_invoices(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            for k, v in row.items():
                setattr(self.invoices[row["id"]], k, v)

    async def invoice(self, tenant_id: str, id: str, *, lock: bool = False) -> Invoice | None:
        i = self.invoices.get(id)
        return i if i is not None and i.tenant_id == tenant_id else None

    async def lines(self, ids: Sequence[str]) -> dict[str, list[InvoiceLineRow]]:
        return {i: self.lines_.get(i, []) for i in ids}

    async def close_invoice(
        self, i: Invoice, status: str, at: datetime, reason: str | None
    ) -> None:
        i.status, i.closed_at, i.status_reason = status, at, reason

    async def billed_history(self, keys: Any, since: datetime) -> list[Any]:
        return []  # no earlier issued invoice: no late usage

    async def next_numbers(self, tenant_id: str, year: int, n: int) -> int:
        last = self.numbers.get((tenant_id, year), 0)
        self.numbers[(tenant_id, year)] = last + n
        return last + 1

    # payments
    async def add_payment(
        self, tenant_id: str, payment_id: str, invoice_id: str, amount: int, currency: str,
        method: str,
    ) -> bool:  # fmt: skip
        if (tenant_id, payment_id) in self.payments_:
            return False
        self.payments_[(tenant_id, payment_id)] = {
            "invoice_id": invoice_id, "amount": amount, "currency": currency, "method": method
        }  # fmt: skip
        return True

    async def apply_payment(self, i: Invoice, amount: int, paid_at: datetime | None) -> None:
        i.amount_paid += amount
        if paid_at is not None:
            i.status, i.paid_at = "paid", paid_at

    async def apply_refund(self, i: Invoice, amount: int) -> None:
        i.amount_refunded += amount

    # billing runs
    async def add_run(self, tenant_id: str, id: str, as_of: datetime) -> bool:
        if (tenant_id, id) in self.runs:
            return False
        self.runs[(tenant_id, id)] = BillingRun(
            tenant_id=tenant_id, id=id, as_of=as_of, status="pending"
        )
        return True

    async def run(self, tenant_id: str, id: str) -> BillingRun | None:
        return self.runs.get((tenant_id, id))


class FakeMeters:
    def __init__(self, *keys: str) -> None:
        self.keys = set(keys)

    async def by_keys(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        return {(t, k): SimpleNamespace(tenant_id=t, key=k) for t, k in pairs if k in self.keys}


class FakeUsage:
    """Hourly usage: (meter key, subject, hour) -> value; a period's total sums its hours."""

    def __init__(self) -> None:
        self.hours: dict[tuple[str, str, datetime], Decimal] = {}

    async def period_totals(self, keys: Sequence[Any]) -> list[Decimal | None]:
        out: list[Decimal | None] = []
        for k in keys:
            found = [
                v for (m, s, h), v in self.hours.items()
                if (m, s) == (k.meter.key, k.subject) and k.start <= h < k.end
            ]  # fmt: skip
            out.append(sum(found, Decimal(0)) if found else None)
        return out


class NoCredits:
    """The credit repository of customers without grants (tests/integration/test_credits.py
    covers credits against PostgreSQL)."""

    async def lock_customers(self, ids: Iterable[str]) -> None:
        pass

    async def usable(self, customer_ids: Sequence[str], as_of: datetime) -> list[Any]:
        return []

    async def grant_of_invoice(self, tenant_id: str, invoice_id: str) -> None:
        return None

    async def entries_of_invoice(self, tenant_id: str, invoice_id: str) -> list[Any]:
        return []

    async def commitments(self, customer_ids: Iterable[str]) -> list[Any]:
        return []

    async def commitment_entries_of_invoice(self, tenant_id: str, invoice_id: str) -> list[Any]:
        return []

    async def add_commitment_entries(self, rows: Sequence[Any]) -> int:
        return 0

    async def append_entries(self, rows: Sequence[Any]) -> set[str]:
        return set()


class NoCreditNotes:
    """The credit-note repository of invoices without notes (tests/integration/
    test_credit_notes.py covers notes against PostgreSQL)."""

    async def of_invoice(self, tenant_id: str, invoice_id: str) -> list[Any]:
        return []


class NoDiscounts:
    """The discount repository of customers without discounts (tests/integration/
    test_discounts.py covers discounts against PostgreSQL)."""

    async def active(self, customer_ids: Iterable[str]) -> list[Any]:
        return []

    async def add_applications(self, rows: Sequence[Any]) -> int:
        return 0


class NoTaxRates:
    """The tax-rate repository of tenants without named rates (customers pay a bare
    ``tax_rate``; tests/integration/test_taxes.py and test_tax_rates.py cover named rates
    against PostgreSQL)."""

    async def catalog(
        self, tenant_ids: Iterable[str], *, share: bool = False
    ) -> dict[str, list[Any]]:
        return {t: [] for t in tenant_ids}

    async def mark_used(self, tenant_id: str, ids: Iterable[str], at: datetime) -> None:
        assert not set(ids), "no named rate exists, none can be used"


class NoHierarchy:
    """The hierarchy repository of flat customers: none is billed on another's invoices
    (tests/integration/test_hierarchies_billing.py covers consolidated invoices)."""

    async def rolled_up(self, customer_ids: Iterable[str], depth: int) -> dict[str, list[str]]:
        return {}


def unit(repo: FakeInvoicing, usage: FakeUsage | None = None) -> MemoryTx:
    return MemoryTx(
        {
            TaxRateRepository: NoTaxRates(),
            DiscountRepository: NoDiscounts(),
            CreditRepository: NoCredits(),
            CreditNoteRepository: NoCreditNotes(),
            HierarchyRepository: NoHierarchy(),
            InvoicingRepository: repo,
            MeterRepository: FakeMeters("calls"),
            UsageRepository: usage or FakeUsage(),
        }
    )


async def apply(tx: MemoryTx, *commands: CloudEvent) -> None:
    """Run ``commands`` as the commands consumer does: claimed, each in tx.command."""
    await handlers.on_command([message(c, offset=i) for i, c in enumerate(commands)], tx)


def cmd(cls: type[CloudEvent], data: Any, id: str, at: datetime = NOV) -> Any:
    return cls(id=id, source="test", tenantid=T, time=at, data=data)


async def customer_with_subscription(repo: FakeInvoicing, start: datetime = NOV) -> None:
    tx = unit(repo)
    await apply(
        tx,
        cmd(UpsertCustomer, ALICE, "c1"),
        cmd(CreatePlan, PRO, "p1"),
        cmd(CreateSubscription, SubscriptionSpec(id="s1", customer="alice", plan="pro",
                                                 start=start), "s1"),
    )  # fmt: skip
    assert [o.status for _, o in tx.outcomes] == ["succeeded"] * 3


def outcomes(tx: MemoryTx) -> list[tuple[str, Any, Any]]:
    return [(o.status, o.result, o.error and o.error["code"]) for _, o in tx.outcomes]


def events(tx: MemoryTx) -> list[tuple[str, str]]:
    """(type, subject) of each event emitted."""
    return [(e["type"], e["subject"]) for e in tx.events]


# --- commands ---------------------------------------------------------------------------


def test_every_invoicing_command_has_a_handler() -> None:
    union = typing.get_args(InvoicingCommand)[0]
    assert set(COMMANDS) == set(typing.get_args(union))


async def test_customers_are_created_once_and_updated_when_their_spec_changes() -> None:
    repo = FakeInvoicing()
    tx = unit(repo)
    renamed = ALICE.model_copy(update={"name": "Alice B."})
    await apply(
        tx,
        cmd(UpsertCustomer, ALICE, "c1"),
        cmd(UpsertCustomer, ALICE, "c2"),
        cmd(UpsertCustomer, renamed, "c3", NOV + HOUR),
    )
    [customer] = repo.customers_.values()
    assert [r for _, r, _ in outcomes(tx)] == [{"customer_id": customer.id}] * 3
    assert events(tx) == [("customer.created", "alice"), ("customer.updated", "alice")]
    assert (customer.name, customer.updated_at) == ("Alice B.", NOV + HOUR)
    assert [m.key for m in tx.outgoing] == [b"acme:alice", b"acme:alice"]
    assert tx.events[0]["data"]["customer_id"] == customer.id
    assert tx.events[0]["causationid"] == "c1"


async def test_a_plan_needs_its_meters_and_cannot_change_under_its_key() -> None:
    repo = FakeInvoicing()
    tx = unit(repo)
    unknown_meter = PlanSpec.model_validate(
        PRO.model_dump(mode="json") | {"key": "odd", "prices": [
            {"kind": "per_unit", "key": "gb", "name": "GB", "meter": "storage",
             "unit_price": "0.1"}
        ]}
    )  # fmt: skip
    other = PlanSpec.model_validate(PRO.model_dump(mode="json") | {"name": "Pro 2"})
    await apply(
        tx,
        cmd(CreatePlan, PRO, "p1"),
        cmd(CreatePlan, unknown_meter, "p2"),
        cmd(CreatePlan, PRO, "p3"),
        cmd(CreatePlan, other, "p4"),
    )
    [plan] = repo.plans_.values()
    assert outcomes(tx) == [
        ("succeeded", {"plan_id": plan.id}, None),
        ("failed", None, "not_found"),
        ("succeeded", {"plan_id": plan.id}, None),
        ("failed", None, "conflict"),
    ]
    assert events(tx) == [("plan.created", "pro")]
    assert [m.key for m in tx.outgoing] == [b"acme"]


async def test_a_subscription_starts_its_first_period_and_an_unknown_plan_fails_it() -> None:
    repo = FakeInvoicing()
    await customer_with_subscription(repo)
    tx = unit(repo)
    await apply(
        tx,
        cmd(CreateSubscription, SubscriptionSpec(id="s2", customer="alice", plan="gold",
                                                 start=NOV), "s2"),
    )  # fmt: skip
    assert outcomes(tx) == [("failed", None, "not_found")]
    assert tx.events == [] and ("acme", "s2") not in repo.subs
    sub = repo.subs[(T, "s1")]
    assert (sub.status, sub.current_period_start, sub.current_period_end) == ("active", NOV, DEC)


async def test_cancelling_at_period_end_marks_the_subscription() -> None:
    repo = FakeInvoicing()
    await customer_with_subscription(repo)
    tx = unit(repo)
    await apply(tx, cmd(CancelSubscription, CancelSpec(subscription_id="s1",
                                                       mode="at_period_end"), "x1"))  # fmt: skip
    assert outcomes(tx) == [
        ("succeeded", {"subscription_id": "s1", "ends_at": DEC.isoformat()}, None)
    ]
    assert events(tx) == [("subscription.updated", "s1")]
    assert tx.events[0]["data"]["cancel_at_period_end"] is True
    assert repo.subs[(T, "s1")].cancel_at_period_end is True


async def test_cancelling_at_once_bills_a_prorated_final_invoice() -> None:
    """Ended on Nov 16 00:00, half of November's 30 days: the flat fee is 15.00; 3,500
    calls before then, 2,500 over the 1,000 included at 0.002 = 5.00. Subtotal 20.00,
    tax 19 % = 3.80, total 23.80 EUR."""
    repo = FakeInvoicing()
    await customer_with_subscription(repo)
    usage = FakeUsage()
    usage.hours[("calls", "alice", NOV + HOUR)] = Decimal(3000)
    usage.hours[("calls", "alice", datetime(2026, 11, 15, 23, tzinfo=UTC))] = Decimal(500)
    usage.hours[("calls", "alice", datetime(2026, 11, 16, tzinfo=UTC))] = Decimal(9999)  # after
    tx = unit(repo, usage)
    at = datetime(2026, 11, 16, tzinfo=UTC)
    await apply(
        tx, cmd(CancelSubscription, CancelSpec(subscription_id="s1", mode="immediately", at=at),
                "x1", at)
    )  # fmt: skip
    assert outcomes(tx) == [
        ("succeeded", {"subscription_id": "s1", "ended_at": at.isoformat(), "proration": "0.5"},
         None)
    ]  # fmt: skip
    [invoice] = repo.invoices.values()
    assert events(tx) == [("invoice.created", invoice.id), ("subscription.ended", "s1")]
    data = tx.events[0]["data"]
    assert [ln["amount"] for ln in data["lines"]] == [1500, 500]
    assert (data["subtotal"], data["tax"], data["total"]) == (2000, 380, 2380)
    assert (invoice.status, invoice.total, invoice.period_end) == ("draft", 2380, at)
    assert invoice.finalize_after == at + HOUR  # the default grace period
    sub = repo.subs[(T, "s1")]
    assert (sub.status, sub.ended_at, sub.current_period_end) == ("ended", at, at)


async def test_a_plan_change_waits_for_the_period_boundary() -> None:
    repo = FakeInvoicing()
    await customer_with_subscription(repo)
    tx = unit(repo)
    await apply(
        tx,
        cmd(CreatePlan, MAX, "p2"),
        cmd(ChangeSubscriptionPlan, PlanChangeSpec(subscription_id="s1", plan="max"), "m1"),
    )
    assert outcomes(tx)[1] == (
        "succeeded", {"subscription_id": "s1", "effective_at": DEC.isoformat()}, None
    )  # fmt: skip
    assert events(tx) == [("plan.created", "max"), ("subscription.updated", "s1")]
    assert (tx.events[1]["data"]["plan"], tx.events[1]["data"]["next_plan"]) == ("pro", "max")


async def test_a_billing_run_is_recorded_for_the_billing_job() -> None:
    repo = FakeInvoicing()
    tx = unit(repo)
    spec = BillingRunSpec(id="run1", as_of=DEC + HOUR)
    await apply(tx, cmd(RunBilling, spec, "r1"), cmd(RunBilling, spec, "r2"))
    result = {"billing_run_id": "run1", "status_url": "/v1/billing-runs/run1"}
    assert outcomes(tx) == [("succeeded", result, None)] * 2
    assert (repo.runs[(T, "run1")].status, repo.runs[(T, "run1")].as_of) == ("pending", DEC + HOUR)
    assert tx.events == []


async def test_configuring_invoicing_sets_the_tenants_settings() -> None:
    repo = FakeInvoicing()
    tx = unit(repo)
    config = InvoicingConfig(rounding="half_up", grace_period_hours=2, number_prefix="ACME")
    await apply(tx, cmd(ConfigureInvoicing, config, "k1"))
    assert outcomes(tx) == [("succeeded", config.model_dump(), None)]
    row = repo.configs_[T]
    assert (row.rounding, row.grace_period_hours, row.number_prefix) == ("half_up", 2, "ACME")


# --- billing: closing a period, finalizing its draft -------------------------------------


async def _billed_november(repo: FakeInvoicing, usage: FakeUsage) -> Invoice:
    """November closed as of Dec 1 01:00: 30.00 + 800 calls over the included 1,000 at
    0.002 = 1.60; subtotal 31.60, tax 19 % = 6.004 -> 6.00, total 37.60 EUR."""
    await customer_with_subscription(repo)
    usage.hours[("calls", "alice", NOV + HOUR)] = Decimal(1800)
    billing = jobs.Billing(None, chunk=10, lookback=timedelta(days=60))
    tx = unit(repo, usage)
    assert await billing.close(tx, [repo.subs[(T, "s1")]], DEC + HOUR) == 1
    [invoice] = repo.invoices.values()
    assert events(tx) == [("invoice.created", invoice.id)]  # a renewal emits no sub event
    assert (invoice.subtotal, invoice.tax, invoice.total) == (3160, 600, 3760)
    sub = repo.subs[(T, "s1")]
    assert (sub.period_index, sub.current_period_start) == (1, DEC)
    assert repo.updated_subscriptions[0]["current_period_end"] == datetime(2027, 1, 1, tzinfo=UTC)
    return invoice


async def test_closing_a_period_drafts_its_invoice_and_renews_the_subscription() -> None:
    await _billed_november(FakeInvoicing(), FakeUsage())


async def test_finalizing_a_draft_numbers_it_and_bills_the_usage_known_by_then() -> None:
    """500 more November calls arrived before finalization: 1,300 over the included at
    0.002 = 2.60; subtotal 32.60, tax 6.194 -> 6.19, total 38.79 EUR, due in 14 days."""
    repo, usage = FakeInvoicing(), FakeUsage()
    draft = await _billed_november(repo, usage)
    usage.hours[("calls", "alice", NOV + 2 * HOUR)] = Decimal(500)
    billing = jobs.Billing(None, chunk=10, lookback=timedelta(days=60))
    tx = unit(repo, usage)
    as_of = DEC + 2 * HOUR
    assert await billing.finalize(tx, [draft], as_of) == 1
    assert events(tx) == [("invoice.finalized", draft.id)]
    data = tx.events[0]["data"]
    assert (data["number"], data["status"], data["total"]) == ("INV-2026-000001", "finalized", 3879)
    assert [ln["amount"] for ln in data["lines"]] == [3000, 260]
    assert (draft.status, draft.number, draft.due_at) == (
        "finalized", "INV-2026-000001", as_of + timedelta(days=14)
    )  # fmt: skip
    assert [ln.amount for ln in repo.lines_[draft.id]] == [3000, 260]


# --- invoices and payments --------------------------------------------------------------


async def _finalized(repo: FakeInvoicing) -> Invoice:
    usage = FakeUsage()
    draft = await _billed_november(repo, usage)
    billing = jobs.Billing(None, chunk=10, lookback=timedelta(days=60))
    await billing.finalize(unit(repo, usage), [draft], DEC + 2 * HOUR)
    assert draft.total == 3760
    return draft


def paid(id: str, amount: int, invoice_id: str, currency: str = "EUR") -> PaymentSucceeded:
    data = PaymentData(
        payment_id=id, invoice_id=invoice_id, customer="alice", amount=amount, currency=currency
    )
    return PaymentSucceeded(id=f"e-{id}", source="test", tenantid=T, time=DEC + 3 * HOUR, data=data)


async def test_payments_are_recorded_once_and_a_covered_invoice_is_paid() -> None:
    repo = FakeInvoicing()
    invoice = await _finalized(repo)
    tx = unit(repo)
    batch = [paid("pay1", 1000, invoice.id), paid("pay1", 1000, invoice.id),
             paid("pay2", 2760, invoice.id)]  # fmt: skip
    batch[1] = batch[1].model_copy(update={"id": "e-pay1-again"})  # another event, same payment
    await handlers.on_payment([message(e, offset=i) for i, e in enumerate(batch)], tx)
    assert events(tx) == [("invoice.payment_recorded", invoice.id), ("invoice.paid", invoice.id)]
    assert [e["data"]["amount_due"] for e in tx.events] == [2760, 0]
    assert (invoice.status, invoice.amount_paid, invoice.paid_at) == (
        "paid", 3760, DEC + 3 * HOUR
    )  # fmt: skip
    assert tx.outgoing[1].key == b"acme:alice"


async def test_an_unusable_payment_is_dead_lettered_and_changes_nothing() -> None:
    repo = FakeInvoicing()
    invoice = await _finalized(repo)
    tx = unit(repo)
    await handlers.on_payment(
        [message(paid("p1", 100, "nope")), message(paid("p2", 100, invoice.id, "USD"), offset=1)],
        tx,
    )
    assert tx.events == []
    reasons = [h["billstream-dlq-reason"] for _, h in tx.dead_letters]
    assert reasons == ["no invoice 'nope'", "payment in USD for an invoice in EUR"]
    assert (invoice.amount_paid, repo.payments_) == (0, {})


async def test_refunds_are_listed_and_exhausted_dunning_makes_an_invoice_uncollectible() -> None:
    repo = FakeInvoicing()
    invoice = await _finalized(repo)
    tx = unit(repo)
    refund = RefundData(
        refund_id="re1", payment_id="pay1", invoice_id=invoice.id, customer="alice", amount=500,
        amount_refunded=500, currency="EUR",
    )  # fmt: skip
    dunning = DunningData(
        invoice_id=invoice.id, customer="alice", amount=3760, currency="EUR", attempts=4
    )
    batch = [
        PaymentRefunded(id="e1", source="test", tenantid=T, data=refund),
        DunningExhausted(id="e2", source="test", tenantid=T, time=DEC + 9 * HOUR, data=dunning),
    ]
    await handlers.on_payment([message(e, offset=i) for i, e in enumerate(batch)], tx)
    assert events(tx) == [
        ("invoice.refunded", invoice.id), ("invoice.marked_uncollectible", invoice.id)
    ]  # fmt: skip
    assert repo.payments_[(T, "re1")]["amount"] == -500
    assert (invoice.amount_refunded, invoice.status, invoice.status_reason) == (
        500, "uncollectible", "dunning exhausted after 4 attempts"
    )  # fmt: skip


async def test_invoices_are_voided_or_marked_uncollectible_only_from_a_state_that_allows_it() -> (
    None
):
    repo = FakeInvoicing()
    invoice = await _finalized(repo)
    tx = unit(repo)
    await apply(
        tx,
        cmd(MarkInvoiceUncollectible, InvoiceActionSpec(invoice_id=invoice.id), "u1", DEC),
        cmd(VoidInvoice, InvoiceActionSpec(invoice_id=invoice.id, reason="duplicate"), "v1", DEC),
        cmd(VoidInvoice, InvoiceActionSpec(invoice_id=invoice.id), "v2", DEC),
    )
    assert outcomes(tx) == [
        ("succeeded", {"invoice_id": invoice.id, "status": "uncollectible"}, None),
        ("succeeded", {"invoice_id": invoice.id, "status": "void"}, None),
        ("failed", None, "invalid_transition"),
    ]
    assert events(tx) == [
        ("invoice.marked_uncollectible", invoice.id), ("invoice.voided", invoice.id)
    ]  # fmt: skip
    assert (invoice.status, invoice.status_reason) == ("void", "duplicate")
