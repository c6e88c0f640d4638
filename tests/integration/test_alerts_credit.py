"""Credit balance alerts (``credit_balance_low``) with the metering, invoicing and alerts
workers, against the real broker and PostgreSQL: a customer's projected credit balance
(grants - what is not invoiced yet) falls below a threshold as usage arrives -> exactly one
alert; more usage -> none again; a new grant lifting it above re-arms the threshold (its
alert resolves) and the next fall is a new alert. A customer without grants never alerts.

Customer c0 (seeded, like tests/integration/test_alerts.py) is on 10.00 USD a month +
0.001 USD a call above 100 included, 20 % tax; its invoice-to-be with ``n`` calls, in cents:
subtotal = 1000 + round(0.001 * (n - 100) USD), total = subtotal + round(20 %):

    calls    usage line   subtotal   tax   pending
        1          0        1000     200     1200
      501         40        1040     208     1248
      601         50        1050     210     1260
      651         55        1055     211     1266
     1401        130        1130     226     1356
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
from schemas.usage import UsageEvent
from storage.alerts import AlertCreditStateRow, AlertsRepository
from tests.conftest import TenantKey
from tests.integration.alerts_support import create_rule, published, settled, stored
from tests.integration.billing_seed import CALLS, seed
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
from workers.alerts.service import CreditLevel
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
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

        await send_usage(p, calls_of("c0", "b", 100))  # 601 calls: 1500 - 1260 = 240 < 250
        await settled(settings, sessions)
        [first] = await stored(sessions, t)
        assert (first.subject, first.kind, first.condition, first.state) == (
            "c0", "credit_balance_low", "credit.balance_low", "firing",
        )  # fmt: skip
        assert (first.threshold, first.value, first.unit) == (Decimal(250), Decimal(240), "USD")
        assert first.message == (
            "credit.balance_low: the projected credit balance of c0 fell below 2.50 USD: "
            "2.40 USD (balance 15.00 USD, not invoiced yet 12.60 USD)"
        )

        # more usage, still below 250 (and above 100): no second alert
        await send_usage(p, calls_of("c0", "c", 50))  # 651 calls: 1500 - 1266 = 234
        await settled(settings, sessions)
        assert [a.id for a in await stored(sessions, t)] == [first.id]

        # a grant lifts it above: 1600 - 1266 = 334; the crossing is over, 250 re-armed
        await grant(p, settings, sessions, t, "g2", 100)
        [again] = await stored(sessions, t)
        assert (again.id, again.state) == (first.id, "resolved")
        assert again.resolution == "credit balance back at or above the threshold"

        # and falls below again: a new crossing, a new alert
        await send_usage(p, calls_of("c0", "d", 750))  # 1401 calls: 1600 - 1356 = 244
        await settled(settings, sessions)
        alerts = await stored(sessions, t)
        assert [(a.threshold, a.value, a.state) for a in alerts] == [
            (Decimal(250), Decimal(240), "resolved"),
            (Decimal(250), Decimal(244), "firing"),
        ]
        assert all(a.subject == "c0" for a in alerts)

    events = await published(settings)
    assert [(e["type"], e["data"]["value"]) for e in events] == [
        ("alert.raised", "240"), ("alert.resolved", "240"), ("alert.raised", "244"),
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
            return [lv.crossings for lv in await AlertsRepository(session).credit_fell([level])]

    async def rose() -> list[int]:
        async with sessions() as session, session.begin():
            return [lv.crossings for lv in await AlertsRepository(session).credit_rose([level])]

    assert await rose() == []  # never below: nothing to re-arm
    assert await fell() == [1]
    assert await fell() == []  # still below: the same crossing
    assert await rose() == [1]  # re-armed: crossing 1 is over
    assert await rose() == []
    async with sessions() as s1:
        async with s1.begin():
            assert [lv.crossings for lv in await AlertsRepository(s1).credit_fell([level])] == [2]
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
