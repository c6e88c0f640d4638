"""The alerts handlers in memory (cosmicpython style): the command table, the event
handlers and the sweep's steps, called with a ``MemoryTx`` over fake repositories that keep
rules and alerts in dicts. What is asserted: the command outcomes, the events emitted and
what the fakes now hold."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiokafka import ConsumerRecord

from schemas import topics
from schemas.alerts import (
    AcknowledgeAlert,
    AlertRef,
    CreateAlertRule,
    DeleteAlertRule,
    ResolveAlert,
    RuleRef,
    RuleSpec,
)
from schemas.envelope import AnyEvent
from schemas.metering import UsageTotalsChanged, UsageTotalsData
from schemas.payments import PaymentData, PaymentFailed, PaymentFailureData, PaymentSucceeded
from storage.alerts import AlertsRepository
from storage.invoicing.hierarchy import HierarchyRepository
from storage.metering import MeterRepository, UsageRepository
from storage.tenants import TenantRepository
from workers.alerts import handlers, jobs, service
from workers.alerts.commands import COMMANDS
from workers.alerts.handlers import DeadLetter
from workers.alerts.service import Alert, OverdueInvoice, Period, RuleDef
from workers.metering import MeterDef, PeriodKey
from workers.runtime.memory import MemoryTx, message
from workers.runtime.tx import DLQ_HEADER_PREFIX, Message

T = "acme"
NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
HOUR = datetime(2026, 11, 20, 15, tzinfo=UTC)
NOVEMBER = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


def clock() -> datetime:
    return NOW


class FakeAlerts:
    """``AlertsRepository`` in memory: rules by (tenant, key), alerts by id (unique per
    (tenant, rule, dedupe), as the table's constraint makes them)."""

    def __init__(self) -> None:
        self.rules: dict[tuple[str, str], RuleDef] = {}
        self.alerts: dict[str, Alert] = {}
        self.periods: dict[tuple[str, str], Period] = {}

    async def add_rule(self, rule: RuleDef) -> RuleDef | None:
        existing = self.rules.get((rule.tenant_id, rule.key))
        if existing is None:
            self.rules[(rule.tenant_id, rule.key)] = rule
        return existing

    async def delete_rule(self, tenant_id: str, key: str) -> RuleDef | None:
        return self.rules.pop((tenant_id, key), None)

    async def rules_for(
        self, tenants: Iterable[str], kinds: Sequence[str], targets: Iterable[str] | None = None
    ) -> list[RuleDef]:
        ts, wanted = set(tenants), set(targets) if targets is not None else None
        return [
            r
            for _, r in sorted(self.rules.items())
            if r.tenant_id in ts and r.kind in kinds and (wanted is None or r.target in wanted)
        ]

    async def raise_alerts(self, alerts: Sequence[Alert]) -> list[Alert]:
        new = [a for a in alerts if a.id not in self.alerts]
        self.alerts.update({a.id: a for a in new})
        return new

    async def alert(self, tenant_id: str, alert_id: str, *, lock: bool = False) -> Alert | None:
        a = self.alerts.get(alert_id)
        return a if a is not None and a.tenant_id == tenant_id else None

    def _set(self, a: Alert, **changes: Any) -> Alert:
        self.alerts[a.id] = after = replace(a, **changes)
        return after

    async def acknowledge(self, tenant_id: str, alert_id: str, at: datetime) -> Alert | None:
        a = await self.alert(tenant_id, alert_id)
        if a is None or a.state != "firing":
            return None
        return self._set(a, state="acknowledged", acknowledged_at=at)

    async def resolve(self, tenant_id: str, alert_id: str, at: datetime, why: str) -> Alert | None:
        a = await self.alert(tenant_id, alert_id)
        if a is None or a.state == "resolved":
            return None
        return self._set(a, state="resolved", resolved_at=at, resolution=why)

    async def resolve_rule(self, tenant_id: str, rule_id: str, at: datetime) -> list[Alert]:
        return [
            self._set(a, state="resolved", resolved_at=at, resolution="rule deleted")
            for a in list(self.alerts.values())
            if a.tenant_id == tenant_id and a.rule_id == rule_id and a.state != "resolved"
        ]

    async def resolve_about(
        self,
        refs: Sequence[tuple[str, str, str]],
        conditions: Sequence[str],
        at: datetime,
        resolution: str,
    ) -> list[Alert]:
        return [
            self._set(a, state="resolved", resolved_at=at, resolution=resolution)
            for a in list(self.alerts.values())
            if a.state != "resolved"
            and a.condition in conditions
            and (a.tenant_id, a.about_type, a.about_id) in refs
        ]

    async def resolve_claimed(
        self, ids: Sequence[str], resolutions: Sequence[str], at: datetime
    ) -> list[Alert]:
        return [
            self._set(self.alerts[i], state="resolved", resolved_at=at, resolution=why)
            for i, why in zip(ids, resolutions, strict=True)
            if self.alerts[i].state != "resolved"
        ]

    async def ended_periods(
        self, now: datetime, limit: int, *, job: str, only: Sequence[str] | None = None
    ) -> list[tuple[str, str]]:
        return [
            (a.tenant_id, a.id)
            for a in self.alerts.values()
            if a.state != "resolved" and a.period_end is not None and a.period_end <= now
        ][:limit]

    async def current_periods(
        self, subjects: Iterable[tuple[str, str]], at: datetime
    ) -> dict[tuple[str, str], Period]:
        return {s: self.periods[s] for s in subjects if s in self.periods}


class FakeMeters:
    def __init__(self, *meters: MeterDef) -> None:
        self.meters = {(m.tenant_id, m.key): m for m in meters}

    async def by_keys(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], MeterDef]:
        return {p: self.meters[p] for p in pairs if p in self.meters}


class FakeUsage:
    """Period totals by (meter key, subject, start, end)."""

    def __init__(self, totals: dict[tuple[str, str, datetime, datetime], Decimal]) -> None:
        self.totals = totals
        self.asked: list[list[PeriodKey]] = []

    async def period_totals(self, keys: list[PeriodKey]) -> list[Decimal | None]:
        self.asked.append(keys)
        return [self.totals.get((k.meter.key, k.subject, k.start, k.end)) for k in keys]


class FakeTenants:
    def __init__(self, *tenants: str) -> None:
        self.tenants = set(tenants)

    async def existing(self, tenant_ids: set[str]) -> set[str]:
        return tenant_ids & self.tenants


def rule(key: str, spec: dict[str, Any], tenant: str = T) -> RuleDef:
    data = RuleSpec.model_validate({"key": key, "rule": spec})
    return service.new_rule(CreateAlertRule(source="tests", tenantid=tenant, data=data))


class FlatCustomers:
    """No customer is invoiced to a parent (tests/integration/test_hierarchies_alerts.py)."""

    async def payers(self, subjects: Any, depth: int) -> dict[tuple[str, str], str]:
        return {}


def tx_with(
    alerts: FakeAlerts, meters: FakeMeters | None = None, usage: FakeUsage | None = None
) -> MemoryTx:
    repos: dict[type[Any], object] = {
        AlertsRepository: alerts,
        HierarchyRepository: FlatCustomers(),
    }
    if meters is not None:
        repos[MeterRepository] = meters
    if usage is not None:
        repos[UsageRepository] = usage
    return MemoryTx(repos)


async def run_command(tx: MemoryTx, command: Any) -> dict[str, Any]:
    await handlers.on_command([message(command)], tx, clock)
    [(_, outcome)] = tx.outcomes[-1:]
    return {"status": outcome.status, "result": outcome.result, "error": outcome.error}


def firing(r: RuleDef, subject: str = "cust-1") -> Alert:
    [a] = service.usage_alerts(r, subject, NOVEMBER, Decimal(120), None, NOW - timedelta(hours=2))
    return a


# --- commands --------------------------------------------------------------------------


def test_the_command_table_has_one_handler_per_command() -> None:
    assert set(COMMANDS) == {CreateAlertRule, DeleteAlertRule, AcknowledgeAlert, ResolveAlert}


async def test_create_rule_stores_it_and_the_same_definition_again_succeeds() -> None:
    alerts = FakeAlerts()
    tx = tx_with(alerts)
    spec = RuleSpec.model_validate(
        {"key": "tokens-high", "rule": {"kind": "usage_threshold", "meter": "tokens",
                                        "thresholds": ["100"]}}
    )  # fmt: skip
    first = await run_command(tx, CreateAlertRule(source="tests", tenantid=T, data=spec))
    again = await run_command(tx, CreateAlertRule(source="tests", tenantid=T, data=spec))

    assert first == {"status": "succeeded", "result": {"rule": "tokens-high"}, "error": None}
    assert again["status"] == "succeeded"
    [stored] = alerts.rules.values()
    assert (stored.kind, stored.target, stored.subject) == ("usage_threshold", "tokens", None)
    assert tx.events == []


async def test_create_rule_with_another_definition_under_the_same_key_fails() -> None:
    alerts = FakeAlerts()
    existing = rule("tokens-high", {"kind": "usage_threshold", "meter": "tokens",
                                    "thresholds": ["100"]})  # fmt: skip
    alerts.rules[(T, "tokens-high")] = existing
    tx = tx_with(alerts)
    spec = RuleSpec.model_validate(
        {"key": "tokens-high", "rule": {"kind": "usage_threshold", "meter": "tokens",
                                        "thresholds": ["200"]}}
    )  # fmt: skip
    outcome = await run_command(tx, CreateAlertRule(source="tests", tenantid=T, data=spec))

    assert outcome["status"] == "failed"
    assert outcome["error"]["code"] == "rule_conflict"
    assert alerts.rules == {(T, "tokens-high"): existing}
    assert tx.events == []


async def test_delete_rule_resolves_its_open_alerts() -> None:
    alerts = FakeAlerts()
    r = rule("q", {"kind": "usage_threshold", "meter": "tokens", "thresholds": ["100"]})
    alerts.rules[(T, "q")] = r
    a = firing(r)
    alerts.alerts[a.id] = a
    tx = tx_with(alerts)
    command = DeleteAlertRule(source="tests", tenantid=T, data=RuleRef(key="q"))
    outcome = await run_command(tx, command)

    assert outcome["result"] == {"rule": "q", "resolved": 1}
    assert alerts.rules == {}
    assert (alerts.alerts[a.id].state, alerts.alerts[a.id].resolution) == (
        "resolved",
        "rule deleted",
    )
    [event] = tx.events
    assert event["type"] == "alert.resolved"
    assert event["id"] == f"{a.id}.alert.resolved"
    assert event["causationid"] == command.id
    assert event["data"]["resolved_at"] == "2026-11-20T15:30:00Z"


async def test_delete_of_an_unknown_rule_fails() -> None:
    tx = tx_with(FakeAlerts())
    outcome = await run_command(
        tx, DeleteAlertRule(source="tests", tenantid=T, data=RuleRef(key="nope"))
    )
    assert outcome["status"] == "failed"
    assert outcome["error"]["code"] == "rule_not_found"
    assert tx.events == []


async def test_acknowledge_then_resolve_by_hand() -> None:
    alerts = FakeAlerts()
    r = rule("q", {"kind": "usage_threshold", "meter": "tokens", "thresholds": ["100"]})
    a = firing(r)
    alerts.alerts[a.id] = a
    tx = tx_with(alerts)

    ack = await run_command(
        tx, AcknowledgeAlert(source="tests", tenantid=T, data=AlertRef(alert_id=a.id))
    )
    again = await run_command(
        tx, AcknowledgeAlert(source="tests", tenantid=T, data=AlertRef(alert_id=a.id))
    )
    resolved = await run_command(
        tx,
        ResolveAlert(source="tests", tenantid=T, data=AlertRef(alert_id=a.id, note="paged ops")),
    )

    assert ack["result"] == {"alert_id": a.id, "state": "acknowledged"}
    assert again["result"] == {"alert_id": a.id, "state": "acknowledged"}  # no change, no event
    assert resolved["result"] == {"alert_id": a.id, "state": "resolved"}
    assert alerts.alerts[a.id].resolution == "resolved by hand: paged ops"
    assert [e["type"] for e in tx.events] == ["alert.acknowledged", "alert.resolved"]


async def test_acknowledging_an_unknown_alert_fails() -> None:
    tx = tx_with(FakeAlerts())
    outcome = await run_command(
        tx, AcknowledgeAlert(source="tests", tenantid=T, data=AlertRef(alert_id="al_" + "0" * 32))
    )
    assert outcome["status"] == "failed"
    assert outcome["error"]["code"] == "alert_not_found"
    assert tx.events == []


# --- event handlers --------------------------------------------------------------------


def totals_changed(subject: str, total: str) -> UsageTotalsChanged:
    return UsageTotalsChanged(
        source="billstream/metering",
        tenantid=T,
        subject=subject,
        data=UsageTotalsData(
            meter_id="m1",
            meter="tokens",
            aggregation="sum",
            subject=subject,
            period_start=HOUR,
            period_end=HOUR + timedelta(hours=1),
            total=Decimal(total),
            events=1,
        ),
    )


async def test_usage_totals_raise_the_thresholds_crossed_once() -> None:
    alerts = FakeAlerts()
    r = rule("q", {"kind": "usage_threshold", "meter": "tokens", "thresholds": ["80", "100"]})
    alerts.rules[(T, "q")] = r
    meter = MeterDef("m1", T, "tokens", "api.call", "sum", "tokens", {})
    # no subscription: the period is the calendar month, its usage read from the read model
    usage = FakeUsage({("tokens", "cust-1", *NOVEMBER): Decimal(90)})
    tx = tx_with(alerts, meters=FakeMeters(meter), usage=usage)
    batch = [message(totals_changed("cust-1", "7")), message(totals_changed("cust-1", "9"))]

    await handlers.on_usage(batch, tx, clock)
    await handlers.on_usage(batch, tx, clock)  # again (a redelivery): nothing new

    [a] = alerts.alerts.values()
    assert (a.threshold, a.value, a.subject, a.state) == (
        Decimal(80),
        Decimal(90),
        "cust-1",
        "firing",
    )
    assert a.message == (
        "tokens usage of cust-1 reached 80: 90 in the period from 2026-11-01 00:00 UTC"
    )
    [event] = tx.events
    assert event["type"] == "alert.raised"
    assert event["data"]["threshold"] == "80" and event["data"]["value"] == "90"
    assert [m.key for m in tx.outgoing] == [T.encode()]
    assert [m.topic for m in tx.outgoing] == [topics.EVENTS_ALERTS]
    assert len(usage.asked[0]) == 1  # one key for the two events of one (subject, hour)


async def test_a_failed_payment_raises_an_alert_its_success_resolves() -> None:
    alerts = FakeAlerts()
    alerts.rules[(T, "pay")] = rule("pay", {"kind": "operational", "condition": "payment_failed"})
    tx = tx_with(alerts)
    failed = PaymentFailed(
        source="billstream/payments",
        tenantid=T,
        data=PaymentFailureData(
            payment_id="pi_1", invoice_id="in_1", customer="cust-1", amount=12_345,
            currency="USD", attempt=2, failure_code="card_declined",
        ),
    )  # fmt: skip
    paid = PaymentSucceeded(
        source="billstream/payments",
        tenantid=T,
        data=PaymentData(
            payment_id="pi_2", invoice_id="in_1", customer="cust-1", amount=12_345,
            currency="USD",
        ),
    )  # fmt: skip
    other = AnyEvent(source="elsewhere", type="something.else", tenantid=T)

    await handlers.on_operations([message(failed), message(other)], tx, clock)
    [a] = alerts.alerts.values()
    assert a.message == (
        "payment of 123.45 USD by cust-1 for invoice in_1 failed (attempt 2): card_declined"
    )
    assert (a.value, a.unit, a.about_type, a.about_id) == (
        Decimal(12_345),
        "USD",
        "invoice",
        "in_1",
    )

    await handlers.on_operations([message(paid)], tx, clock)
    assert (alerts.alerts[a.id].state, alerts.alerts[a.id].resolution) == (
        "resolved",
        "payment succeeded",
    )
    assert [(e["type"], e["causationid"]) for e in tx.events] == [
        ("alert.raised", failed.id),
        ("alert.resolved", paid.id),
    ]


def dead_letter(tenant: str, offset: int, reason: str) -> Message[DeadLetter]:
    raw = f'{{"tenantid": "{tenant}", "subject": "cust-9", "id": "e{offset}"}}'.encode()
    headers = [(DLQ_HEADER_PREFIX + "reason", reason.encode()),
               (DLQ_HEADER_PREFIX + "topic", b"billstream.usage.v1")]  # fmt: skip
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        "billstream.usage.v1.dlq", 0, offset, 0, 0, tenant.encode(), raw, None, 0, 0, headers
    )
    return Message(record, handlers.decode_dead_letter(raw))


async def test_dead_letters_of_known_tenants_raise_alerts() -> None:
    alerts = FakeAlerts()
    alerts.rules[(T, "dlq")] = rule("dlq", {"kind": "operational", "condition": "dead_letter"})
    tx = MemoryTx({AlertsRepository: alerts, TenantRepository: FakeTenants(T)})

    await handlers.on_dead_letters(
        [dead_letter(T, 7, "unknown meter"), dead_letter("ghost", 8, "?")], tx, clock
    )

    [a] = alerts.alerts.values()
    assert (a.subject, a.about_type, a.about_id) == (
        "cust-9",
        "dead_letter",
        "billstream.usage.v1.dlq/0:7",
    )
    assert a.message == (
        "a message from billstream.usage.v1 was dead-lettered to billstream.usage.v1.dlq at "
        "0:7: unknown meter"
    )
    assert [e["type"] for e in tx.events] == ["alert.raised"]


# --- the sweep's steps ------------------------------------------------------------------


async def test_the_sweep_raises_overdue_invoices_of_tenants_with_the_rule() -> None:
    alerts = FakeAlerts()
    alerts.rules[(T, "late")] = rule("late", {"kind": "operational",
                                              "condition": "invoice_overdue"})  # fmt: skip
    tx = tx_with(alerts)
    due = datetime(2026, 11, 5, 9, tzinfo=UTC)
    overdue = [
        OverdueInvoice(T, "in_1", "INV-0001", "cust-1", due, 4_200, "EUR"),
        OverdueInvoice("other", "in_2", None, "cust-2", due, 100, "EUR"),  # no rule: nothing
    ]

    assert await jobs.raise_overdue(tx, overdue, now=NOW) == 1
    [a] = alerts.alerts.values()
    assert (
        a.message == "invoice INV-0001 of cust-1 is overdue: 42.00 EUR was due 2026-11-05 09:00 UTC"
    )
    assert a.dedupe == "invoice_overdue:in_1"
    assert [e["type"] for e in tx.events] == ["alert.raised"]


async def test_the_sweep_resolves_alerts_whose_period_ended() -> None:
    alerts = FakeAlerts()
    r = rule("q", {"kind": "usage_threshold", "meter": "tokens", "thresholds": ["100"]})
    a = firing(r)
    alerts.alerts[a.id] = a
    tx = tx_with(alerts)

    assert await jobs.claim_ended(tx, None, now=NOW) == []  # November is not over
    after = NOVEMBER[1] + timedelta(minutes=1)
    claimed = await jobs.claim_ended(tx, None, now=after)
    assert claimed == [(T, a.id)]
    assert await jobs.resolve_ended(tx, claimed, now=after) == 1
    assert (alerts.alerts[a.id].state, alerts.alerts[a.id].resolution) == (
        "resolved",
        "period ended",
    )
    [event] = tx.events
    assert event["type"] == "alert.resolved" and "causationid" not in event
