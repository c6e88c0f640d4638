"""Payments handlers in memory: the command tables, the Stripe event table, the consumers and
the job's steps, called with a ``MemoryTx`` and a fake repository (no broker, no database,
no Stripe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from schemas.envelope import CloudEvent
from schemas.invoicing import InvoiceData, InvoiceFinalized
from schemas.payments import (
    AttachPaymentMethod,
    ConfigureStripe,
    CustomerSyncData,
    OfflinePaymentSpec,
    PaymentMethodData,
    RecordOfflinePayment,
    RefundPayment,
    RefundSpec,
    StripeEventData,
    StripeEventReceived,
    StripeSettingsData,
    SyncCustomer,
)
from storage.payments import PaymentsRepository
from workers.payments import handlers, jobs, service
from workers.payments.commands import COMMANDS, STRIPE_COMMANDS, Stripe
from workers.payments.errors import Conflict, NotFound
from workers.payments.service import Attempt, Outcome, QueuedOperation
from workers.runtime.memory import MemoryTx, message

NOW = datetime(2031, 1, 1, tzinfo=UTC)
T = "acme"


def row(**kw: Any) -> SimpleNamespace:
    return SimpleNamespace(**kw)


def collection(status: str = "due", attempts: int = 0, amount: int = 500) -> SimpleNamespace:
    return row(
        tenant_id=T, invoice_id="inv-1", customer="alice", amount=amount, currency="USD",
        status=status, attempts=attempts, next_attempt_at=NOW, correlationid="corr-1",
    )  # fmt: skip


def payment(**kw: Any) -> SimpleNamespace:
    values: dict[str, Any] = {
        "tenant_id": T, "id": "pay_1", "invoice_id": "inv-1", "customer": "alice",
        "amount": 1_000, "currency": "USD", "method": "card", "attempt": 1,
        "state": "creating", "stripe_payment_intent": None, "stripe_charge": None,
        "failure_code": None, "failure_message": None, "amount_refunded": 0,
        "disputed": False, "updated_at": None,
    }  # fmt: skip
    values.update(kw)
    return row(**values)


@dataclass
class FakePayments:
    """The ``PaymentsRepository`` methods payments' handlers use, in memory."""

    accounts: dict[str, Any] = field(default_factory=dict)
    customers: dict[tuple[str, str], Any] = field(default_factory=dict)
    collections: dict[tuple[str, str], Any] = field(default_factory=dict)
    payments: dict[tuple[str, str], Any] = field(default_factory=dict)
    refunds: dict[tuple[str, str], Any] = field(default_factory=dict)
    operations: dict[tuple[str, str], Any] = field(default_factory=dict)

    async def account(self, tenant_id: str) -> Any:
        return self.accounts.get(tenant_id)

    async def set_account(self, tenant_id: str, **kw: Any) -> None:
        self.accounts[tenant_id] = row(tenant_id=tenant_id, **kw)

    async def customer(self, tenant_id: str, customer: str) -> Any:
        return self.customers.get((tenant_id, customer))

    async def set_customer(self, tenant_id: str, customer: str, stripe_id: str) -> None:
        self.customers[tenant_id, customer] = row(
            stripe_customer_id=stripe_id, payment_method_id=None
        )

    async def set_payment_method(self, tenant_id: str, customer: str, pm: str) -> None:
        self.customers[tenant_id, customer].payment_method_id = pm

    async def open_collection(self, c: Any) -> bool:
        key = (c.tenant_id, c.invoice_id)
        if key in self.collections:
            return False
        self.collections[key] = row(
            tenant_id=c.tenant_id, invoice_id=c.invoice_id, customer=c.customer,
            amount=c.amount, currency=c.currency, status=c.status, attempts=0,
            next_attempt_at=c.next_attempt_at, correlationid=c.correlationid,
        )  # fmt: skip
        return True

    async def collection(self, tenant_id: str, invoice_id: str, *, lock: bool = False) -> Any:
        return self.collections.get((tenant_id, invoice_id))

    async def stop_collection(self, tenant_id: str, invoice_id: str) -> None:
        c = self.collections.get((tenant_id, invoice_id))
        if c is not None and c.status == "due":
            c.status, c.next_attempt_at = "cancelled", None

    close_collection = staticmethod(PaymentsRepository.close_collection)
    settle = staticmethod(PaymentsRepository.settle)
    link_stripe = staticmethod(PaymentsRepository.link_stripe)
    set_refunded = staticmethod(PaymentsRepository.set_refunded)
    mark_disputed = staticmethod(PaymentsRepository.mark_disputed)
    finish_operation = staticmethod(PaymentsRepository.finish_operation)

    async def payment(self, tenant_id: str, payment_id: str, *, lock: bool = False) -> Any:
        return self.payments.get((tenant_id, payment_id))

    async def payment_by_stripe(
        self, tenant_id: str, *, intent: str | None = None, charge: str | None = None
    ) -> Any:
        for p in self.payments.values():
            if p.tenant_id == tenant_id and (
                (intent and p.stripe_payment_intent == intent)
                or (charge and p.stripe_charge == charge)
            ):
                return p
        return None

    async def add_offline_payment(self, tenant_id: str, d: OfflinePaymentSpec) -> bool:
        if (tenant_id, d.payment_id) in self.payments:
            return False
        self.payments[tenant_id, d.payment_id] = payment(
            id=d.payment_id, invoice_id=d.invoice_id, customer=d.customer, amount=d.amount,
            method=d.method, attempt=None, state="succeeded",
        )  # fmt: skip
        return True

    async def refund(self, tenant_id: str, refund_id: str) -> Any:
        return self.refunds.get((tenant_id, refund_id))

    async def record_refund(self, tenant_id: str, *, refund_id: str, **kw: Any) -> Any:
        p = self.payments[tenant_id, kw["payment_id"]]
        p.amount_refunded = min(p.amount, p.amount_refunded + kw["amount"])
        self.refunds[tenant_id, refund_id] = row(id=refund_id, **kw)
        return p

    async def refund_in_flight(self, tenant_id: str, payment_id: str) -> bool:
        return any(
            o.type == "payments.refund" and o.state != "done"
            and o.command["data"]["payment_id"] == payment_id
            for (t, _), o in self.operations.items() if t == tenant_id
        )  # fmt: skip

    async def queue_operation(self, tenant_id: str, id: str, type: str, command: Any) -> None:
        self.operations.setdefault(
            (tenant_id, id), row(id=id, type=type, command=command, state="pending")
        )

    async def operation(self, tenant_id: str, id: str) -> Any:
        return self.operations.get((tenant_id, id))

    async def start_attempt(self, c: Any, *, lease_until: datetime, payment_id: str) -> Attempt:
        c.attempts += 1
        self.payments[c.tenant_id, payment_id] = payment(
            id=payment_id, amount=c.amount, attempt=c.attempts
        )
        c.status, c.next_attempt_at = "in_flight", lease_until
        return Attempt(
            c.tenant_id, c.invoice_id, c.customer, c.amount, c.currency, c.attempts,
            payment_id, False, c.correlationid,
        )  # fmt: skip


def memory(repo: FakePayments) -> MemoryTx:
    return MemoryTx({PaymentsRepository: repo})


def envelope(**kw: Any) -> dict[str, Any]:
    return {"source": "tests", "tenantid": T, **kw}


# --- COMMANDS ---------------------------------------------------------------------------------


async def test_configure_stripe_stores_the_account_and_answers_without_a_secret() -> None:
    repo = FakePayments()
    tx = memory(repo)
    data = StripeSettingsData(
        secret_key="enc:sk", webhook_secret="enc:wh", auto_collection=True, endpoint_token="t" * 24
    )
    cmd = ConfigureStripe(data=data, **envelope())
    await handlers.on_command([message(cmd)], tx)
    [(type_, outcome)] = tx.outcomes
    assert (type_, outcome.status) == ("payments.configure_stripe", "succeeded")
    assert outcome.result == {"auto_collection": True, "configured": True}
    assert repo.accounts[T].secret_key == "enc:sk" and repo.accounts[T].auto_collection
    assert tx.events == []


def offline(payment_id: str = "pay_off", amount: int = 500) -> RecordOfflinePayment:
    spec = OfflinePaymentSpec(
        payment_id=payment_id, invoice_id="inv-1", customer="alice", amount=amount,
        currency="USD", method="bank_transfer", reference="wire 42",
    )  # fmt: skip
    return RecordOfflinePayment(data=spec, **envelope(correlationid="corr-9"))


async def test_an_offline_payment_covering_the_invoice_settles_its_collection() -> None:
    repo = FakePayments(collections={(T, "inv-1"): collection("due", amount=500)})
    tx = memory(repo)
    cmd = offline(amount=500)
    result = await COMMANDS[RecordOfflinePayment](cmd, tx)
    assert result == {"payment_id": "pay_off", "invoice_id": "inv-1", "amount": 500}
    assert (repo.collections[T, "inv-1"].status, repo.collections[T, "inv-1"].next_attempt_at) == (
        "settled",
        None,
    )
    [event] = tx.events
    assert event["type"] == "payment.succeeded"
    assert event["data"] == {
        "payment_id": "pay_off", "invoice_id": "inv-1", "customer": "alice", "amount": 500,
        "currency": "USD", "method": "bank_transfer",
    }  # fmt: skip
    assert (event["causationid"], event["correlationid"]) == (cmd.id, "corr-9")
    assert [m.key for m in tx.outgoing] == [b"acme:alice"]


async def test_a_partial_offline_payment_leaves_the_collection_open() -> None:
    repo = FakePayments(collections={(T, "inv-1"): collection("due", amount=500)})
    await COMMANDS[RecordOfflinePayment](offline(amount=499), memory(repo))
    assert repo.collections[T, "inv-1"].status == "due"


async def test_a_repeated_offline_payment_fails_and_emits_nothing() -> None:
    repo = FakePayments()
    tx = memory(repo)
    await handlers.on_command([message(offline())], tx)
    assert [o.status for _, o in tx.outcomes] == ["succeeded"]
    again = memory(repo)  # another command (another id) for the same payment
    await handlers.on_command([message(offline(payment_id="pay_off"))], again)
    [(_, outcome)] = again.outcomes
    assert outcome.status == "failed" and outcome.error is not None
    assert (outcome.error["code"], outcome.error["field"]) == ("conflict", "payment_id")
    assert again.events == []


async def test_a_command_that_calls_stripe_is_queued_with_no_outcome_yet() -> None:
    repo = FakePayments()
    tx = memory(repo)
    cmd = SyncCustomer(data=CustomerSyncData(customer="alice", email="a@b.example"), **envelope())
    woken: list[str] = []
    await handlers.on_command([message(cmd)], tx, wake=lambda: woken.append("collector"))
    tx.commit()
    assert woken == ["collector"]  # the job performs it at once
    op = repo.operations[T, cmd.id]
    assert (op.type, op.state, op.command["data"]["customer"]) == (
        "payments.sync_customer",
        "pending",
        "alice",
    )
    assert tx.outcomes == [] and tx.events == []


# --- STRIPE_COMMANDS (performed by the job, recorded in one Tx) -------------------------------


class FakeGateway:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def find_customer(self, tenant: str, customer: str) -> str | None:
        self.calls.append(("find_customer", customer))
        return None

    async def create_customer(self, tenant: str, customer: str, email: Any, name: Any) -> str:
        self.calls.append(("create_customer", customer, email))
        return "cus_1"

    async def attach(self, pm: str, stripe_customer: str) -> None:
        self.calls.append(("attach", pm, stripe_customer))

    async def find_refund(self, intent: str, refund_id: str) -> str | None:
        self.calls.append(("find_refund", intent, refund_id))
        return None

    async def refund(self, intent: str, amount: int, refund_id: str) -> str:
        self.calls.append(("refund", intent, amount, refund_id))
        return "re_1"


def stripe_for(repo: FakePayments, gateway: FakeGateway, *, resumed: bool = False) -> Stripe:
    async def read(step: Any) -> Any:
        return await step(memory(repo))

    async def gateway_of(tenant: str) -> Any:
        return gateway

    return Stripe(read, gateway_of, resumed)


async def test_sync_customer_creates_it_in_stripe_then_records_the_mapping() -> None:
    repo, gateway = FakePayments(), FakeGateway()
    cmd = SyncCustomer(data=CustomerSyncData(customer="alice", email="a@b.example"), **envelope())
    finish = await STRIPE_COMMANDS[SyncCustomer](cmd, stripe_for(repo, gateway, resumed=True))
    assert gateway.calls == [
        ("find_customer", "alice"),
        ("create_customer", "alice", "a@b.example"),
    ]
    tx = memory(repo)
    assert await finish(tx) == {"customer": "alice", "stripe_customer_id": "cus_1"}
    assert repo.customers[T, "alice"].stripe_customer_id == "cus_1"


async def test_attach_payment_method_needs_a_synced_customer() -> None:
    repo, gateway = FakePayments(), FakeGateway()
    cmd = AttachPaymentMethod(
        data=PaymentMethodData(customer="alice", payment_method="pm_1"), **envelope()
    )
    try:
        await STRIPE_COMMANDS[AttachPaymentMethod](cmd, stripe_for(repo, gateway))
    except NotFound as e:
        assert e.field == "customer"
    else:
        raise AssertionError("attached to a customer Stripe does not know")
    await repo.set_customer(T, "alice", "cus_1")
    finish = await STRIPE_COMMANDS[AttachPaymentMethod](cmd, stripe_for(repo, gateway))
    assert await finish(memory(repo)) == {"customer": "alice", "payment_method": "pm_1"}
    assert gateway.calls == [("attach", "pm_1", "cus_1")]
    assert repo.customers[T, "alice"].payment_method_id == "pm_1"


async def test_a_partial_refund_calls_stripe_once_then_records_it_and_emits_payment_refunded() -> (
    None
):
    repo, gateway = FakePayments(), FakeGateway()
    repo.payments[T, "pay_1"] = payment(
        state="succeeded", stripe_payment_intent="pi_1", amount=1_000, amount_refunded=100
    )
    cmd = RefundPayment(
        data=RefundSpec(refund_id="ref_1", payment_id="pay_1", amount=300), **envelope()
    )
    finish = await STRIPE_COMMANDS[RefundPayment](cmd, stripe_for(repo, gateway))
    assert gateway.calls == [("refund", "pi_1", 300, "ref_1")]  # USD: the same minor units
    tx = memory(repo)
    assert await finish(tx) == {"refund_id": "ref_1", "amount": 300, "stripe_refund_id": "re_1"}
    assert repo.payments[T, "pay_1"].amount_refunded == 400  # 100 before + 300
    [event] = tx.events
    assert (event["type"], event["data"]["amount"], event["data"]["amount_refunded"]) == (
        "payment.refunded",
        300,
        400,
    )


async def test_refunding_more_than_remains_is_refused_before_stripe_is_called() -> None:
    repo, gateway = FakePayments(), FakeGateway()
    repo.payments[T, "pay_1"] = payment(state="succeeded", stripe_payment_intent="pi_1")
    cmd = RefundPayment(
        data=RefundSpec(refund_id="ref_1", payment_id="pay_1", amount=1_001), **envelope()
    )
    try:
        await STRIPE_COMMANDS[RefundPayment](cmd, stripe_for(repo, gateway))
    except Conflict as e:
        assert str(e) == "at most 1000 can be refunded"
    else:
        raise AssertionError("refunded more than was paid")
    assert gateway.calls == []


async def test_finishing_an_operation_records_the_outcome_and_marks_it_done() -> None:
    repo = FakePayments()
    cmd = SyncCustomer(data=CustomerSyncData(customer="alice"), **envelope())
    await repo.queue_operation(T, cmd.id, cmd.type, cmd.model_dump(mode="json"))
    op = QueuedOperation(T, cmd.id, cmd.type, cmd.model_dump(mode="json"), False)
    tx = memory(repo)
    error = NotFound("no such customer", field="customer")
    assert await jobs.finish_operation(tx, op, cmd, None, error) is True
    [(type_, outcome)] = tx.outcomes
    assert (type_, outcome.id, outcome.status) == ("payments.sync_customer", cmd.id, "failed")
    assert repo.operations[T, cmd.id].state == "done"
    assert await jobs.finish_operation(memory(repo), op, cmd, None, error) is False  # done


# --- consumers ------------------------------------------------------------------------------


def invoice_finalized(amount_due: int, invoice_id: str = "inv-1") -> InvoiceFinalized:
    data = InvoiceData(
        invoice_id=invoice_id, number="INV-1", status="finalized", customer="alice",
        subscription_id="sub-1", currency="USD", period_start=NOW - timedelta(days=30),
        period_end=NOW, subtotal=amount_due, tax=0, total=amount_due, amount_paid=0,
        amount_due=amount_due, tax_rate=Decimal("0"), due_at=NOW + timedelta(days=14), lines=[],
    )  # fmt: skip
    return InvoiceFinalized(subject=invoice_id, data=data, **envelope())


async def test_a_finalized_invoice_opens_its_collection_and_a_voided_one_stops_it() -> None:
    repo = FakePayments()
    await repo.set_account(T, auto_collection=True)
    tx = memory(repo)
    event = invoice_finalized(1_250)
    woken: list[str] = []
    await handlers.on_invoice(
        [message(event), message(invoice_finalized(0, "inv-0"))],
        tx,
        clock=lambda: NOW,
        wake=lambda: woken.append("collector"),
    )
    assert list(repo.collections) == [(T, "inv-1")]  # nothing due on inv-0: not collected
    assert woken == []  # not before the commit
    tx.commit()
    assert woken == ["collector"]  # charged at once, not at the collector's next tick
    c = repo.collections[T, "inv-1"]
    assert (c.status, c.amount, c.next_attempt_at, c.correlationid) == (
        "due",
        1_250,
        NOW,
        event.id,
    )
    voided = CloudEvent(type="invoice.voided", data={"invoice_id": "inv-1"}, **envelope())
    await handlers.on_invoice([message(voided)], memory(repo), clock=lambda: NOW)
    assert repo.collections[T, "inv-1"].status == "cancelled"


def stripe_event(type_: str, obj: dict[str, Any]) -> StripeEventReceived:
    data = StripeEventData(id=f"evt_{type_}", type=type_, created=1, object=obj)
    return StripeEventReceived(id=data.id, subject=type_, data=data, **envelope())


DUNNING = service.Dunning([3.0], lambda: NOW)


async def test_payment_intent_succeeded_settles_the_current_attempt() -> None:
    repo = FakePayments(collections={(T, "inv-1"): collection("awaiting", attempts=1)})
    repo.payments[T, "pay_1"] = payment(state="processing", amount=500)
    obj = {
        "id": "pi_1", "status": "succeeded", "latest_charge": "ch_1",
        "metadata": {"billstream_payment": "pay_1"},
    }  # fmt: skip
    tx = memory(repo)
    await handlers.on_stripe([message(stripe_event("payment_intent.succeeded", obj))], tx,
                             dunning=DUNNING)  # fmt: skip
    p = repo.payments[T, "pay_1"]
    assert (p.state, p.stripe_payment_intent, p.stripe_charge) == ("succeeded", "pi_1", "ch_1")
    assert repo.collections[T, "inv-1"].status == "succeeded"
    [event] = tx.events
    assert (event["type"], event["data"]["amount"], event["correlationid"]) == (
        "payment.succeeded",
        500,
        "corr-1",
    )


async def test_a_refund_made_in_stripe_emits_what_it_added() -> None:
    repo = FakePayments()
    repo.payments[T, "pay_1"] = payment(
        state="succeeded", stripe_charge="ch_1", amount=1_000, amount_refunded=200
    )
    obj = {"id": "ch_1", "amount_refunded": 500, "refunds": {"data": [{"id": "re_9"}]}}
    tx = memory(repo)
    await handlers.on_stripe([message(stripe_event("charge.refunded", obj))], tx, dunning=DUNNING)
    assert repo.payments[T, "pay_1"].amount_refunded == 500
    [event] = tx.events
    assert event["type"] == "payment.refunded"
    assert (event["data"]["refund_id"], event["data"]["amount"]) == ("re_9", 300)  # 500 - 200
    # the same event again adds nothing
    again = memory(repo)
    await handlers.on_stripe([message(stripe_event("charge.refunded", obj))], again,
                             dunning=DUNNING)  # fmt: skip
    assert again.events == []


async def test_a_dispute_is_emitted_once_in_our_minor_units() -> None:
    repo = FakePayments()
    repo.payments[T, "pay_1"] = payment(state="succeeded", stripe_charge="ch_1", currency="ISK")
    obj = {"id": "dp_1", "charge": "ch_1", "amount": 15_000, "reason": "fraudulent"}
    tx = memory(repo)
    await handlers.on_stripe([message(stripe_event("charge.dispute.created", obj))], tx,
                             dunning=DUNNING)  # fmt: skip
    assert repo.payments[T, "pay_1"].disputed is True
    [event] = tx.events
    # Stripe sends ISK with two (zero) decimals: 15000 → 150 krónur
    assert (event["type"], event["data"]["amount"], event["data"]["reason"]) == (
        "payment.disputed",
        150,
        "fraudulent",
    )
    again = memory(repo)
    await handlers.on_stripe([message(stripe_event("charge.dispute.created", obj))], again,
                             dunning=DUNNING)  # fmt: skip
    assert again.events == []


async def test_other_stripe_events_are_ignored() -> None:
    tx = memory(FakePayments())
    await handlers.on_stripe([message(stripe_event("customer.created", {"id": "cus_1"}))], tx,
                             dunning=DUNNING)  # fmt: skip
    assert tx.events == [] and tx.outgoing == []


# --- the job's steps ----------------------------------------------------------------------------


async def test_a_declined_attempt_is_recorded_and_retried_per_the_schedule() -> None:
    repo = FakePayments(collections={(T, "inv-1"): collection("due")})
    tx = memory(repo)
    [attempt] = await jobs.start_attempts(tx, [repo.collections[T, "inv-1"]], NOW)
    assert (attempt.attempt, repo.collections[T, "inv-1"].status) == (1, "in_flight")
    declined = Outcome("failed", "pi_1", "ch_1", "card_declined", "Declined.")
    record = memory(repo)
    assert await jobs.record_outcomes(record, [(attempt, declined)], DUNNING) == 1
    c, p = repo.collections[T, "inv-1"], repo.payments[T, attempt.payment_id]
    assert (c.status, c.next_attempt_at) == ("due", NOW + timedelta(days=3))
    assert (p.state, p.failure_code, p.stripe_payment_intent) == ("failed", "card_declined", "pi_1")
    [event] = record.events
    assert (event["type"], event["data"]["attempt"], event["data"]["amount"]) == (
        "payment.failed",
        1,
        500,
    )
    # an outcome for an attempt no longer leased (settled meanwhile) changes nothing
    late = memory(repo)
    await jobs.record_outcomes(late, [(attempt, Outcome("succeeded", "pi_1", "ch_1"))], DUNNING)
    assert late.events == [] and p.state == "failed"
