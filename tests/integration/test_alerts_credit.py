"""Credit balance alerts (``credit_balance_low``) with the metering, invoicing and alerts
workers, against the real broker and PostgreSQL: a customer's projected credit balance
(grants - what is not invoiced yet) falls below a threshold as usage arrives -> exactly one
alert; more usage -> none again; a new grant lifting it above re-arms the threshold (its
alert resolves) and the next fall is a new alert. A customer without grants never alerts.
A balance that falls with no usage and no credit event (a new subscription's flat fee) is
found by the sweep -> exactly one alert.

Customer c0 (seeded, like tests/integration/test_alerts.py) is on 10.00 USD a month +
0.001 USD a call above 100 included, 20 % tax; its invoice-to-be with ``n`` calls, in cents:
subtotal = 1000 + round(0.001 * (n - 100) USD), total = subtotal + round(20 %) (half-even):

    calls    usage line   subtotal   tax   pending
        1          0        1000     200     1200
      501         40        1040     208     1248
      525         42        1042     208     1250
      526         43        1043     209     1252
      651         55        1055     211     1266
     1354        125        1125     225     1350
     1355        126        1126     225     1351

Usage arrives in batches of any size, so a fall is approached in one send that stays at or
above the threshold and made by a single call: whatever the batches, the crossing's value
is known.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaProducer

from schemas import groups, topics
from schemas.credits import CreditGrantSpec, GrantCredits
from schemas.envelope import CloudEvent
from schemas.invoicing import (
    CreatePlan,
    CreateSubscription,
    CustomerSpec,
    SubscriptionSpec,
    UpsertCustomer,
)
from schemas.usage import UsageEvent
from storage.alert_credits import AlertCreditStateRow, CreditAlertsRepository
from storage.alerts import AlertsRepository
from tests.conftest import TenantKey, make_tenant
from tests.integration.alerts_support import create_rule, published, settled, stored
from tests.integration.billing_seed import (
    CALLS,
    PLAN,
    expected_total,
    grant_terms,
    seed,
    seed_grants,
)
from tests.integration.support import (
    Sessions,
    command_outcome,
    insert_meters,
    producer,
    running,
    send_raw,
    send_usage,
    usage,
    wait_committed_to_end,
    wait_outbox_drained,
    waiting_on_lock,
)
from tests.unit.test_alerts_credit import credit_rule
from workers.alerts.app import build as build_alerts
from workers.alerts.jobs import SWEEP_LIMIT, CreditCursor
from workers.alerts.service import CreditLevel
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.runtime import Jobs
from workers.settings import Settings

RULE = {"kind": "credit_balance_low", "currency": "USD", "thresholds": [250, 100]}


async def grant(
    p: AIOKafkaProducer, settings: Settings, sessions: Sessions, tenant: str, id: str, amount: int
) -> None:
    """Grant c0 ``amount`` cents now; wait until the alerts worker has read its event."""
    spec = CreditGrantSpec(id=id, customer="c0", amount=amount, currency="USD")
    c = GrantCredits(source="tests", tenantid=tenant, data=spec)
    key = topics.partition_key(tenant, "c0").encode()
    await send_raw(p, topics.COMMANDS_INVOICING, c.to_json(), key)
    record = await command_outcome(sessions, tenant, c.id)
    assert record.status == "succeeded", record.error
    await wait_outbox_drained(sessions)
    await wait_committed_to_end(settings, groups.ALERTS_OPERATIONS, topics.EVENTS_INVOICING)
    await wait_outbox_drained(sessions)


@pytest.fixture
async def workers(settings: Settings) -> AsyncIterator[None]:
    async with (
        running(build_metering(settings)),
        running(build_invoicing(settings)),
        running(build_alerts(settings)),
    ):
        yield


async def test_once_per_crossing_and_rearmed_by_a_grant(
    settings: Settings, sessions: Sessions, tenant: TenantKey, workers: None
) -> None:
    t = tenant.tenant_id
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    calls = (await insert_meters(sessions, t, [CALLS]))["calls"]
    await seed(sessions, t, 2, month, calls.id, 1)  # c0 and c1, one call each so far

    def calls_of(who: str, prefix: str, n: int) -> list[UsageEvent]:
        return [usage(t, f"{prefix}{i}", subject=who, time=now) for i in range(n)]

    async with producer(settings) as p:
        await create_rule(p, sessions, t, "credit-low", RULE)  # every customer with grants
        await grant(p, settings, sessions, t, "g1", 1500)  # projected 1500 - 1200 = 300

        await send_usage(p, calls_of("c0", "a", 500))  # 501 calls: 1500 - 1248 = 252
        await send_usage(p, calls_of("c1", "n", 1000))  # c1 has no grant: never evaluated
        await settled(settings, sessions)
        assert await stored(sessions, t) == []

        await send_usage(p, calls_of("c0", "b", 24))  # 525 calls: 1500 - 1250 = 250, not below
        await settled(settings, sessions)
        assert await stored(sessions, t) == []

        await send_usage(p, calls_of("c0", "x", 1))  # 526 calls: 1500 - 1252 = 248 < 250
        await settled(settings, sessions)
        [first] = await stored(sessions, t)
        assert (first.subject, first.kind, first.condition, first.state) == (
            "c0", "credit_balance_low", "credit.balance_low", "firing",
        )  # fmt: skip
        assert (first.threshold, first.value, first.unit) == (Decimal(250), Decimal(248), "USD")
        assert first.message == (
            "credit.balance_low: the projected credit balance of c0 fell below 2.50 USD: "
            "2.48 USD (balance 15.00 USD, not invoiced yet 12.52 USD)"
        )

        # more usage, still below 250 (and above 100): no second alert
        await send_usage(p, calls_of("c0", "c", 125))  # 651 calls: 1500 - 1266 = 234
        await settled(settings, sessions)
        assert [a.id for a in await stored(sessions, t)] == [first.id]

        # a grant lifts it above: 1600 - 1266 = 334; the crossing is over, 250 re-armed
        await grant(p, settings, sessions, t, "g2", 100)
        [again] = await stored(sessions, t)
        assert (again.id, again.state) == (first.id, "resolved")
        assert again.resolution == "credit balance back at or above the threshold"

        # and falls below again: a new crossing, a new alert
        await send_usage(p, calls_of("c0", "d", 703))  # 1354 calls: 1600 - 1350 = 250
        await settled(settings, sessions)
        assert [(a.id, a.state) for a in await stored(sessions, t)] == [(first.id, "resolved")]
        await send_usage(p, calls_of("c0", "y", 1))  # 1355 calls: 1600 - 1351 = 249
        await settled(settings, sessions)
        alerts = await stored(sessions, t)
        assert [(a.threshold, a.value, a.state) for a in alerts] == [
            (Decimal(250), Decimal(248), "resolved"),
            (Decimal(250), Decimal(249), "firing"),
        ]
        assert all(a.subject == "c0" for a in alerts)

    events = await published(settings)
    assert [(e["type"], e["data"]["value"]) for e in events] == [
        ("alert.raised", "248"), ("alert.resolved", "248"), ("alert.raised", "249"),
    ]  # fmt: skip
    raised = events[0]
    assert raised["subject"] == "c0"
    assert raised["data"]["condition"] == "credit.balance_low"
    assert raised["data"]["about"] == {
        "type": "customer", "id": "c0", "href": "/v1/customers/c0/credits",
    }  # fmt: skip
    assert json.dumps(raised).count("credit.balance_low") == 2  # condition and message


async def test_a_crossing_is_kept_once_whoever_sees_it(
    sessions: Sessions, tenant: TenantKey
) -> None:
    """The state's transitions, straight against PostgreSQL: falling below twice is one
    crossing, re-arming ends it, the next fall is crossing 2; of two transactions seeing the
    same fall at once, one gets it."""
    t = tenant.tenant_id
    rule = credit_rule(tenant=t)
    async with sessions() as session, session.begin():
        assert await AlertsRepository(session).add_rule(rule) is None
    level = CreditLevel(t, rule.id, "c0", 1000)

    async def fell() -> list[int]:
        async with sessions() as session, session.begin():
            return [
                lv.crossings for lv in await CreditAlertsRepository(session).credit_fell([level])
            ]

    async def rose() -> list[int]:
        async with sessions() as session, session.begin():
            return [
                lv.crossings for lv in await CreditAlertsRepository(session).credit_rose([level])
            ]

    assert await rose() == []  # never below: nothing to re-arm
    assert await fell() == [1]
    assert await fell() == []  # still below: the same crossing
    assert await rose() == [1]  # re-armed: crossing 1 is over
    assert await rose() == []
    async with sessions() as s1:
        async with s1.begin():
            assert [
                lv.crossings for lv in await CreditAlertsRepository(s1).credit_fell([level])
            ] == [2]
            other = asyncio.ensure_future(fell())
            await wait_for(lambda: waiting_on_lock(sessions))  # blocked on s1's row
        assert await other == []  # it sees crossing 2 committed: nothing new
    # the state belongs to its rule: deleting the rule deletes it
    key = (t, rule.id, "c0", 1000)
    async with sessions() as session, session.begin():
        assert await session.get(AlertCreditStateRow, key) is not None
        assert await AlertsRepository(session).delete_rule(t, rule.key) is not None
    async with sessions() as session:
        assert await session.get(AlertCreditStateRow, key) is None


async def invoicing_command(
    p: AIOKafkaProducer, sessions: Sessions, c: CloudEvent, customer: str | None
) -> None:
    """Send an invoicing command keyed as the ingress keys it; wait for its success."""
    key = topics.partition_key(c.tenantid, customer) if customer else c.tenantid
    await send_raw(p, topics.COMMANDS_INVOICING, c.to_json(), key.encode())
    record = await command_outcome(sessions, c.tenantid, c.id)
    assert record.status == "succeeded", record.error


async def test_a_balance_falling_with_no_event_is_found_by_the_sweep(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    """c0 has 15.00 USD of credit and no subscription: projected 1500, above the rule's
    500. A subscription to PLAN (10.00 USD a month flat, 20 % tax, no usage) makes its
    invoice-to-be 1000 + 200 = 1200: projected 1500 - 1200 = 300 < 500, with no usage and
    no credit event to say so. The sweep finds it: exactly one alert, and looking again
    raises nothing more. c1 (no grant) is never looked at."""
    t = tenant.tenant_id
    fast = settings.model_copy(update={"alerts_tick_s": 0.2})
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    rule = {"kind": "credit_balance_low", "currency": "USD", "thresholds": [500]}
    async with (
        running(build_invoicing(fast)),
        running(build_alerts(fast)),
        producer(fast) as p,
    ):
        await insert_meters(sessions, t, [CALLS])
        await create_rule(p, sessions, t, "credit-low", rule)
        for who in ("c0", "c1"):
            spec = CustomerSpec(external_id=who, name=who, currency="USD", tax_rate=Decimal("0.2"))
            await invoicing_command(
                p, sessions, UpsertCustomer(source="tests", tenantid=t, data=spec), who
            )
        await invoicing_command(
            p, sessions, CreatePlan(source="tests", tenantid=t, data=PLAN), None
        )
        await grant(p, fast, sessions, t, "g1", 1500)
        assert await stored(sessions, t) == []

        sub = SubscriptionSpec(id="s0", customer="c0", plan=PLAN.key, start=hour)
        await invoicing_command(
            p, sessions, CreateSubscription(source="tests", tenantid=t, data=sub), "c0"
        )
        [alert] = await wait_for(lambda: stored(sessions, t), timeout_s=30)
        assert (alert.subject, alert.condition, alert.state) == (
            "c0", "credit.balance_low", "firing",
        )  # fmt: skip
        assert (alert.threshold, alert.value, alert.unit) == (Decimal(500), Decimal(300), "USD")
        assert alert.message == (
            "credit.balance_low: the projected credit balance of c0 fell below 5.00 USD: "
            "3.00 USD (balance 15.00 USD, not invoiced yet 12.00 USD)"
        )

        # another pass over the watched customers (only c0: c1 has no grant) raises nothing
        jobs = Jobs(sessions, retry_initial_s=0.01, retry_max_s=0.1)
        assert await CreditCursor().step(jobs, datetime.now(UTC)) == 1
        await wait_outbox_drained(sessions)
        assert [a.id for a in await stored(sessions, t)] == [alert.id]

    raised = [e for e in await published(settings) if e["tenantid"] == t]
    assert [(e["type"], e["data"]["value"]) for e in raised] == [("alert.raised", "300")]


async def test_the_sweep_pages_through_the_watched_customers(
    sessions: Sessions, tenant: TenantKey
) -> None:
    """acme: 600 customers with grants and a rule on every customer; other: 3 with grants
    and a rule on c1 only. A pass is 601 customers in chunks of at most SWEEP_LIMIT, the
    cursor going on from where the last chunk stopped and starting over once a chunk is
    short; the first pass raises each crossing (computed from the seeded grants and
    invoices-to-be), the second nothing."""
    t = tenant.tenant_id
    await make_tenant(sessions, "other")
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for tid, n in ((t, 600), ("other", 3)):
        calls = (await insert_meters(sessions, tid, [CALLS]))["calls"]
        await seed(sessions, tid, n, month, calls.id, 1)
        await seed_grants(sessions, tid, n, month)
    async with sessions() as session, session.begin():
        repo = AlertsRepository(session)
        assert await repo.add_rule(credit_rule(tenant=t)) is None  # thresholds 1000 and 0
        assert await repo.add_rule(credit_rule(tenant="other", subject="c1")) is None

    def projected(i: int) -> int:
        return sum(amount for _, amount, _ in grant_terms(i)) - expected_total(i)

    crossings = sum((projected(i) < 1000) + (projected(i) < 0) for i in range(600))
    crossings += (projected(1) < 1000) + (projected(1) < 0)
    assert crossings > 0

    jobs = Jobs(sessions, retry_initial_s=0.01, retry_max_s=0.1)
    cursor = CreditCursor()
    assert SWEEP_LIMIT == 500
    assert await cursor.step(jobs, datetime.now(UTC)) == 500
    assert cursor.after is not None and cursor.after[0] == t
    assert await cursor.step(jobs, datetime.now(UTC)) == 101  # acme's last 100, other's c1
    assert cursor.after is None  # the pass is over
    first = await stored(sessions, t, limit=1000) + await stored(sessions, "other")
    assert len(first) == crossings
    assert {a.subject for a in await stored(sessions, "other")} <= {"c1"}

    assert await cursor.step(jobs, datetime.now(UTC)) == 500  # the next pass
    assert await cursor.step(jobs, datetime.now(UTC)) == 101
    again = await stored(sessions, t, limit=1000) + await stored(sessions, "other")
    assert sorted(a.id for a in again) == sorted(a.id for a in first)
