"""The entitlements worker against the real broker and PostgreSQL: access follows the
subscription (a real invoicing worker), the money (payment and invoice events on their
topics), the usage (metering's totals from usage published on two partitions at once),
overrides and grants; every transition is announced once, and a replay announces nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from schemas import groups, topics
from schemas.entitlements import (
    ConfigureEntitlements,
    CreateFeature,
    CustomerEntitlements,
    EntitlementsConfig,
    FeatureSpec,
    Grant,
    GrantEntitlement,
    GrantSpec,
    OverrideSpec,
    PlanEntitlementsSpec,
    SetEntitlementOverride,
    SetPlanEntitlements,
)
from schemas.envelope import CloudEvent
from schemas.invoicing import (
    InvoiceData,
    InvoiceMarkedUncollectible,
    InvoicePaid,
    InvoiceVoided,
)
from schemas.payments import DunningData, DunningExhausted, PaymentFailed, PaymentFailureData
from storage.entitlements import EntitlementRepository, FeatureRow
from tests.conftest import TenantKey
from tests.integration.receipts_support import with_secrets
from tests.integration.support import (
    Sessions,
    command_outcome,
    producer,
    read_all,
    usage,
    wait_committed_to_end,
    wait_outbox_drained,
)
from tests.integration.test_invoicing import Stack, stack
from workers.devstack import wait_for
from workers.entitlements import evaluate
from workers.entitlements.app import build
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.payments import SecretsKeyMissing
from workers.settings import Settings

BASIC = {
    "key": "basic",
    "name": "Basic",
    "currency": "USD",
    "interval": "month",
    "prices": [{"kind": "flat", "key": "base", "name": "Basic plan", "amount": "10.00"}],
}
CALLS = {"key": "calls", "event_type": "api.call", "aggregation": "count"}


def customer(external_id: str) -> dict[str, Any]:
    return {"external_id": external_id, "name": external_id.title(), "currency": "USD"}


@pytest.fixture
def ent_settings(settings: Settings) -> Settings:
    return with_secrets(
        settings.model_copy(update={"invoicing_tick_s": 0.2, "entitlements_tick_s": 0.2})
    )


@pytest.fixture
async def st(ent_settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = ent_settings
    async with stack(s, tenant, build_metering(s), build_invoicing(s), build(s)) as st:
        await st.api.ok("POST", "/v1/meters", CALLS)
        yield st


async def send(settings: Settings, *items: tuple[str, CloudEvent, str]) -> None:
    """(topic, event, key) records, acknowledged."""
    async with producer(settings) as p:
        for topic, event, key in items:
            await p.send_and_wait(topic, event.to_json(), key=key.encode())


async def command(settings: Settings, sessions: Sessions, c: CloudEvent, key: str) -> Any:
    await send(settings, (topics.COMMANDS_ENTITLEMENTS, c, key))
    return await command_outcome(sessions, c.tenantid, c.id, timeout_s=30)


async def ok(settings: Settings, sessions: Sessions, c: CloudEvent, key: str) -> Any:
    outcome = await command(settings, sessions, c, key)
    assert outcome.status == "succeeded", outcome.error
    return outcome.result


async def check(sessions: Sessions, tenant: str, who: str) -> CustomerEntitlements:
    """What the check API answers (the same function on the same read model)."""
    async with sessions() as db:
        now = datetime.now(UTC)
        return evaluate(await EntitlementRepository(db).snapshot(tenant, who, now), now)


def view(answer: CustomerEntitlements, feature: str) -> Any:
    return next(e for e in answer.entitlements if e.feature == feature)


async def announced(settings: Settings, tenant: str) -> list[dict[str, Any]]:
    records, _ = await read_all(settings, topics.EVENTS_ENTITLEMENTS)
    events = [json.loads(r.value or b"") for r in records]
    return [e for e in events if e["tenantid"] == tenant]


def brief(e: dict[str, Any]) -> tuple[Any, ...]:
    d = e["data"]
    return (e["type"], d.get("customer"), tuple(d.get("features", ())), d.get("reason"))


def by_customer(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((brief(e) for e in events), key=lambda b: str(b[1]))  # stable


async def until(settings: Settings, tenant: str, wanted: tuple[Any, ...]) -> None:
    async def seen() -> bool:
        return wanted in [brief(e) for e in await announced(settings, tenant)]

    try:
        await wait_for(seen, timeout_s=30, interval_s=0.1)
    except TimeoutError:
        got = [brief(e) for e in await announced(settings, tenant)]
        raise AssertionError(f"{wanted} not announced; got {got}") from None


async def settled(settings: Settings, sessions: Sessions) -> None:
    """Every record the worker reads consumed and every event it emitted published."""
    for group, topic in (
        (groups.ENTITLEMENTS_EVENTS, topics.EVENTS_INVOICING),
        (groups.ENTITLEMENTS_EVENTS, topics.EVENTS_PAYMENTS),
        (groups.ENTITLEMENTS_USAGE, topics.EVENTS_METERING),
        (groups.ENTITLEMENTS_COMMANDS, topics.COMMANDS_ENTITLEMENTS),
    ):
        await wait_committed_to_end(settings, group, topic, timeout_s=30)
    await wait_outbox_drained(sessions, timeout_s=30)


def feature(t: str, key: str, kind: str, meter: str | None = None) -> CreateFeature:
    spec = FeatureSpec(key=key, name=key.upper(), kind=kind, meter=meter)  # type: ignore[arg-type]
    return CreateFeature(source="tests", tenantid=t, data=spec)


def failed(t: str, who: str, invoice: str, at: datetime) -> PaymentFailed:
    data = PaymentFailureData(
        payment_id=f"pay-{invoice}", invoice_id=invoice, customer=who, amount=1000,
        currency="USD", attempt=1,
    )  # fmt: skip
    return PaymentFailed(source="tests", tenantid=t, subject=invoice, time=at, data=data)


def exhausted(t: str, who: str, invoice: str) -> DunningExhausted:
    data = DunningData(invoice_id=invoice, customer=who, amount=1000, currency="USD", attempts=3)
    return DunningExhausted(source="tests", tenantid=t, subject=invoice, data=data)


def paid(t: str, who: str, invoice: str) -> InvoicePaid:
    now = datetime.now(UTC)
    data = InvoiceData(
        invoice_id=invoice, status="paid", customer=who, currency="USD", period_start=now,
        period_end=now, subtotal=1000, tax=0, total=1000, amount_paid=1000, amount_due=0,
        lines=[],
    )  # fmt: skip
    return InvoicePaid(source="tests", tenantid=t, subject=invoice, data=data)


async def test_access_follows_the_subscription_and_the_money(
    st: Stack, ent_settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    s, t = ent_settings, tenant.tenant_id
    await st.api.ok("POST", "/v1/plans", BASIC)
    for who in ("alice", "bob"):
        await st.api.ok("POST", "/v1/customers", customer(who))
    await ok(s, sessions, feature(t, "sso", "boolean"), t)
    await ok(s, sessions, feature(t, "api", "metered", "calls"), t)
    plan = PlanEntitlementsSpec(plan="basic", entitlements=[Grant(feature="sso"),
                                Grant(feature="api", limit=Decimal(100))])  # fmt: skip
    await ok(s, sessions, SetPlanEntitlements(source="tests", tenantid=t, data=plan), t)
    config = EntitlementsConfig(payment_grace_hours=0)
    await ok(s, sessions, ConfigureEntitlements(source="tests", tenantid=t, data=config), t)
    assert view(await check(sessions, t, "alice"), "sso").reason == "not_subscribed"

    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for who in ("alice", "bob"):
        await st.api.ok(
            "POST", "/v1/subscriptions",
            {"customer": who, "plan": "basic", "start": hour.isoformat()},
        )  # fmt: skip
    await until(s, t, ("entitlement.granted", "alice", ("api", "sso"), "subscribed"))
    answer = await check(sessions, t, "alice")
    assert answer.status == "active" and answer.products == ["basic"]
    assert view(answer, "sso").has_access and view(answer, "api").limit == Decimal(100)

    # a failed payment with no grace: denied at once, payment pending
    money = [
        (topics.EVENTS_PAYMENTS, failed(t, "alice", "in1", datetime.now(UTC)), f"{t}:alice"),
        (topics.EVENTS_PAYMENTS, exhausted(t, "alice", "in1"), f"{t}:alice"),
        (topics.EVENTS_INVOICING, paid(t, "alice", "in1"), f"{t}:alice"),
    ]
    await send(s, money[0])
    await until(s, t, ("entitlement.suspended", "alice", ("api", "sso"), "payment_pending"))
    denied = view(await check(sessions, t, "alice"), "sso")
    assert (denied.has_access, denied.reason) == (False, "payment_pending")
    # dunning exhausted: suspended
    await send(s, money[1])
    await until(s, t, ("entitlement.suspended", "alice", ("api", "sso"), "suspended"))
    assert (await check(sessions, t, "alice")).status == "suspended"
    # paid: restored
    await send(s, money[2])
    await until(s, t, ("entitlement.restored", "alice", ("api", "sso"), "paid"))
    back = await check(sessions, t, "alice")
    assert back.status == "active" and view(back, "sso").has_access
    restored = [e for e in await announced(s, t) if e["type"] == "entitlement.restored"]
    assert restored[0]["data"]["invoice_id"] == "in1"

    # a grace of three days: past due, access kept, nothing announced
    config = EntitlementsConfig(payment_grace_hours=72)
    await ok(s, sessions, ConfigureEntitlements(source="tests", tenantid=t, data=config), t)
    failed_at = datetime.now(UTC)
    await send(s, (topics.EVENTS_PAYMENTS, failed(t, "bob", "in2", failed_at), f"{t}:bob"))

    async def past_due() -> bool:
        return (await check(sessions, t, "bob")).status == "past_due"

    await wait_for(past_due, timeout_s=30)
    bob = await check(sessions, t, "bob")
    assert bob.grace_until is not None
    assert abs(bob.grace_until - (failed_at + timedelta(hours=72))) < timedelta(seconds=1)
    assert view(bob, "sso").has_access

    # a replay of what was consumed announces nothing new
    await settled(s, sessions)
    before = await announced(s, t)
    await send(s, *money, (topics.EVENTS_PAYMENTS, failed(t, "bob", "in2", failed_at), f"{t}:bob"))
    invoicing, _ = await read_all(s, topics.EVENTS_INVOICING)
    async with producer(s) as p:
        for r in invoicing:
            await p.send_and_wait(r.topic, r.value, key=r.key, partition=r.partition)
    await settled(s, sessions)
    after = await announced(s, t)
    # the same events, each customer's in its order (they are on their customer's
    # partition; partitions are read in no particular order)
    assert by_customer(after) == by_customer(before)
    assert [brief(e) for e in before if e["data"].get("customer") == "bob"] == [
        ("entitlement.granted", "bob", ("api", "sso"), "subscribed")
    ]


async def send_usage_on(p: AIOKafkaProducer, t: str, who: str, n: int, part: int, tag: str) -> Any:
    now = datetime.now(UTC)
    futures = [
        await p.send(
            topics.USAGE,
            usage(t, f"{tag}-{i}", type="api.call", subject=who, time=now).to_json(),
            key=f"{t}:{who}".encode(),
            partition=part,
        )
        for i in range(n)
    ]
    return futures


async def test_a_hard_limit_crossed_on_two_partitions_at_once_is_reported_once(
    st: Stack, ent_settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    s, t = ent_settings, tenant.tenant_id
    await st.api.ok("POST", "/v1/customers", customer("alice"))
    await ok(s, sessions, feature(t, "api", "metered", "calls"), t)
    await ok(s, sessions, feature(t, "api_soft", "metered", "calls"), t)
    key = f"{t}:alice"
    for f, limit, mode in (("api", 5, "hard"), ("api_soft", 3, "soft")):
        spec = OverrideSpec(customer="alice", feature=f, limit=Decimal(limit), limit_mode=mode)  # type: ignore[arg-type]
        await ok(s, sessions, SetEntitlementOverride(source="tests", tenantid=t, data=spec), key)
    await until(s, t, ("entitlement.granted", "alice", ("api",), "override"))

    # 4 calls on partition 0 and 3 on partition 1, at once: 7 calls >= 5 (hard), >= 3 (soft)
    async with producer(s) as p:
        futures = [
            *await send_usage_on(p, t, "alice", 4, 0, "p0"),
            *await send_usage_on(p, t, "alice", 3, 1, "p1"),
        ]
        await asyncio.gather(*futures)

    async def counted() -> bool:
        return view(await check(sessions, t, "alice"), "api").usage == Decimal(7)

    await wait_for(counted, timeout_s=30)
    await settled(s, sessions)
    answer = await check(sessions, t, "alice")
    hard, soft = view(answer, "api"), view(answer, "api_soft")
    assert (hard.has_access, hard.reason, hard.remaining) == (False, "limit_reached", 0)
    assert (soft.has_access, soft.limit_reached, soft.usage) == (True, True, Decimal(7))
    reached = [e for e in await announced(s, t) if e["type"] == "entitlement.limit_reached"]
    assert sorted((e["data"]["feature"], e["data"]["limit_mode"]) for e in reached) == [
        ("api", "hard"), ("api_soft", "soft")
    ]  # fmt: skip

    # the usage topic's totals again: nothing new
    totals, _ = await read_all(s, topics.EVENTS_METERING)
    async with producer(s) as p:
        for r in totals:
            await p.send_and_wait(r.topic, r.value, key=r.key, partition=r.partition)
    await settled(s, sessions)
    again = [e for e in await announced(s, t) if e["type"] == "entitlement.limit_reached"]
    assert len(again) == 2

    # the limit raised by an override: restored (limit_raised); 7 of 10 used
    spec = OverrideSpec(customer="alice", feature="api", limit=Decimal(10))
    await ok(s, sessions, SetEntitlementOverride(source="tests", tenantid=t, data=spec), key)
    await until(s, t, ("entitlement.restored", "alice", ("api",), "limit_raised"))
    raised = view(await check(sessions, t, "alice"), "api")
    assert (raised.has_access, raised.remaining) == (True, Decimal(3))


async def test_a_grant_gives_access_until_it_expires(
    st: Stack, ent_settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    s, t = ent_settings, tenant.tenant_id
    await st.api.ok("POST", "/v1/customers", customer("alice"))
    await ok(s, sessions, feature(t, "reports", "boolean"), t)
    assert not view(await check(sessions, t, "alice"), "reports").has_access
    expires = datetime.now(UTC) + timedelta(seconds=4)
    spec = GrantSpec(id="g1", customer="alice", feature="reports", expires_at=expires)
    g = GrantEntitlement(source="tests", tenantid=t, data=spec)
    assert (await ok(s, sessions, g, f"{t}:alice"))["grant_id"] == "g1"
    await until(s, t, ("entitlement.granted", "alice", ("reports",), "grant"))
    given = view(await check(sessions, t, "alice"), "reports")
    assert (given.has_access, given.source) == (True, "grant")
    # the same id with other terms fails
    other = GrantSpec(id="g1", customer="alice", feature="reports")
    bad = await command(s, sessions, GrantEntitlement(source="tests", tenantid=t, data=other), t)
    assert (bad.status, bad.error["code"]) == ("failed", "grant_conflict")
    # expired: revoked by the tick
    await until(s, t, ("entitlement.revoked", "alice", ("reports",), "grant_expired"))
    gone = view(await check(sessions, t, "alice"), "reports")
    assert (gone.has_access, gone.reason) == (False, "not_subscribed")


async def test_a_feature_redefined_with_another_kind_fails_and_changes_nothing(
    st: Stack, ent_settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    s, t = ent_settings, tenant.tenant_id
    await ok(s, sessions, feature(t, "api", "metered", "calls"), t)
    renamed = CreateFeature(
        source="tests", tenantid=t,
        data=FeatureSpec(key="api", name="API calls", kind="metered", meter="calls"),
    )  # fmt: skip
    assert (await ok(s, sessions, renamed, t))["created"] is False
    bad = await command(s, sessions, feature(t, "api", "boolean"), t)
    assert (bad.status, bad.error["code"], bad.error["field"]) == (
        "failed",
        "feature_conflict",
        "kind",
    )
    unknown = await command(s, sessions, feature(t, "rows", "metered", "rows"), t)
    assert (unknown.status, unknown.error["code"]) == ("failed", "unknown_meter")
    async with sessions() as db:
        row = await db.get(FeatureRow, (t, "api"))
        assert row is not None and (row.kind, row.meter, row.name) == (
            "metered",
            "calls",
            "API calls",
        )
    await settled(s, sessions)
    created = [e for e in await announced(s, t) if e["type"] == "feature.created"]
    assert [e["data"]["key"] for e in created] == ["api"]
    async with sessions() as db:
        key = await EntitlementRepository(db).current_signing_key()
    assert key is not None  # the first tick made the deployment's first signing key


async def test_the_worker_refuses_to_start_without_a_secrets_key(settings: Settings) -> None:
    with pytest.raises(SecretsKeyMissing, match="BILLSTREAM_SECRETS_KEY"):
        await build(settings).start()


def settled_invoice(cls: Any, t: str, who: str, invoice: str, status: str) -> Any:
    now = datetime.now(UTC)
    data = InvoiceData(
        invoice_id=invoice, status=status, customer=who, currency="USD", period_start=now,
        period_end=now, subtotal=1000, tax=0, total=1000, amount_paid=0, amount_due=1000,
        lines=[],
    )  # fmt: skip
    return cls(source="tests", tenantid=t, subject=invoice, data=data)


async def test_a_shorter_grace_voided_and_uncollectible_invoices(
    st: Stack, ent_settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    """A grace shortened to 0 ends the past-due customers' access on the next tick; a voided
    invoice restores it (nothing is owed); one marked uncollectible suspends."""
    s, t = ent_settings, tenant.tenant_id
    await st.api.ok("POST", "/v1/plans", BASIC)
    await ok(s, sessions, feature(t, "sso", "boolean"), t)
    plan = PlanEntitlementsSpec(plan="basic", entitlements=[Grant(feature="sso")])
    await ok(s, sessions, SetPlanEntitlements(source="tests", tenantid=t, data=plan), t)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for who in ("carol", "dave"):
        await st.api.ok("POST", "/v1/customers", customer(who))
        await st.api.ok(
            "POST", "/v1/subscriptions",
            {"customer": who, "plan": "basic", "start": hour.isoformat()},
        )  # fmt: skip
        await until(s, t, ("entitlement.granted", who, ("sso",), "subscribed"))

    # the default grace (72 h): past due, access kept
    for who in ("carol", "dave"):
        await send(s, (topics.EVENTS_PAYMENTS, failed(t, who, f"in-{who}", datetime.now(UTC)),
                       f"{t}:{who}"))  # fmt: skip

    async def both_past_due() -> bool:
        return [(await check(sessions, t, who)).status for who in ("carol", "dave")] == [
            "past_due",
            "past_due",
        ]

    await wait_for(both_past_due, timeout_s=30)
    assert view(await check(sessions, t, "carol"), "sso").has_access

    # the tenant shortens the grace to 0: both are denied, announced by the tick
    config = EntitlementsConfig(payment_grace_hours=0)
    await ok(s, sessions, ConfigureEntitlements(source="tests", tenantid=t, data=config), t)
    for who in ("carol", "dave"):
        await until(s, t, ("entitlement.suspended", who, ("sso",), "payment_pending"))
    denied = view(await check(sessions, t, "carol"), "sso")
    assert (denied.has_access, denied.reason) == (False, "payment_pending")

    # carol's invoice voided: nothing owed, restored; dave's marked uncollectible: suspended
    await send(
        s,
        (topics.EVENTS_INVOICING,
         settled_invoice(InvoiceVoided, t, "carol", "in-carol", "void"), f"{t}:carol"),
        (topics.EVENTS_INVOICING,
         settled_invoice(InvoiceMarkedUncollectible, t, "dave", "in-dave", "uncollectible"),
         f"{t}:dave"),
    )  # fmt: skip
    await until(s, t, ("entitlement.restored", "carol", ("sso",), "voided"))
    await until(s, t, ("entitlement.suspended", "dave", ("sso",), "suspended"))
    carol, dave = await check(sessions, t, "carol"), await check(sessions, t, "dave")
    assert (carol.status, view(carol, "sso").has_access) == ("active", True)
    assert (dave.status, view(dave, "sso").reason) == ("suspended", "suspended")
    await settled(s, sessions)
    told = [brief(e) for e in await announced(s, t) if e["data"].get("customer") == "carol"]
    assert told == [
        ("entitlement.granted", "carol", ("sso",), "subscribed"),
        ("entitlement.suspended", "carol", ("sso",), "payment_pending"),
        ("entitlement.restored", "carol", ("sso",), "voided"),
    ]  # each once, in order
