"""The alerts worker with the metering worker, against the real broker and PostgreSQL:
thresholds crossed batched and one event at a time, no duplicate after a replay, percent of
the plan's included quantity and spend from a real subscription, the lifecycle."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from schemas import topics
from schemas.alerts import AcknowledgeAlert, AlertRef, DeleteAlertRule, ResolveAlert, RuleRef
from schemas.groups import ALERTS_USAGE as USAGE_GROUP
from tests.conftest import KafkaServer, TenantKey
from tests.integration.alerts_support import command, create_rule, published, settled, stored
from tests.integration.billing_seed import CALLS, seed
from tests.integration.support import (
    Sessions,
    insert_meters,
    producer,
    quick_rejoin,
    running,
    send_usage,
    usage,
    wait_committed_to_end,
)
from tests.integration.test_ops_replay import no_members
from workers.alerts.app import build as build_alerts
from workers.devstack import wait_for
from workers.metering.app import build as build_metering
from workers.ops.replay import ReplayRequest, parse_bound, replay
from workers.settings import Settings

TOKENS = {
    "key": "tokens",
    "event_type": "llm.completion",
    "aggregation": "sum",
    "value_property": "$.tokens",
}


def tokens(tenant: str, id: str, subject: str, n: int, at: datetime) -> object:
    return usage(tenant, id, type="llm.completion", subject=subject, time=at, data={"tokens": n})


@contextlib.asynccontextmanager
async def workers(settings: Settings) -> AsyncIterator[None]:
    async with running(build_metering(settings)), running(build_alerts(settings)):
        yield


async def test_thresholds_at_exactly_80_and_100_batched_and_one_by_one_and_never_twice(
    settings: Settings,
    sessions: Sessions,
    tenant: TenantKey,
    kafka: KafkaServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    settings = quick_rejoin(settings, kafka)
    t = tenant.tenant_id
    now = datetime.now(UTC)
    await insert_meters(sessions, t, [TOKENS])
    rule = {"kind": "usage_threshold", "meter": "tokens", "thresholds": ["80", "100"]}
    async with producer(settings) as p:
        # 100 tokens for "batched" on the topic before any worker runs: one batch
        await send_usage(
            p, [tokens(t, f"b{i}", "batched", n, now) for i, n in enumerate((20, 20, 40, 20))]
        )
        async with running(build_alerts(settings)):
            await create_rule(p, sessions, t, "tokens-80-100", rule)
            async with running(build_metering(settings)):
                await settled(settings, sessions)
                batched = await stored(sessions, t, subject="batched")
                assert [(a.threshold, a.value) for a in batched] == [
                    (Decimal(80), Decimal(100)),  # both crossed by the same batch
                    (Decimal(100), Decimal(100)),
                ]

                # "single": 20 tokens at a time, each applied before the next is sent
                for i in range(5):
                    await send_usage(p, [tokens(t, f"s{i}", "single", 20, now)])
                    await settled(settings, sessions)
                    raised = await stored(sessions, t, subject="single")
                    expected = {3: [80], 4: [80, 100]}.get(i, [])
                    assert [a.threshold for a in raised] == [Decimal(x) for x in expected]
                    # the value that triggered each is the total when it was crossed
                    assert [a.value for a in raised] == [Decimal(x) for x in expected]

                # the same events again (redelivered by a producer): nothing new
                await send_usage(p, [tokens(t, "s4", "single", 20, now)])
                await settled(settings, sessions)

        assert len(await stored(sessions, t)) == 4
        events = await published(settings, ["alert.raised"])
        assert len(events) == 4
        first = next(
            e for e in events if e["subject"] == "single" and e["data"]["threshold"] == "80"
        )
        assert first["data"]["rule"] == "tokens-80-100" and first["data"]["state"] == "firing"
        assert first["data"]["value"] == "80" and first["data"]["about"]["type"] == "meter_usage"
        assert first["data"]["about"]["href"].startswith("/v1/meters/tokens/usage?subject=single")

        # replay the metering events into the alerts group (that consumer keeps no inbox):
        # the alerts' own uniqueness keeps each raised once
        await no_members(settings, USAGE_GROUP)
        result = await replay(
            settings,
            ReplayRequest(
                topic=topics.EVENTS_METERING,
                group=USAGE_GROUP,
                start=parse_bound("0", "--from"),
                reason="test: alerts replay",
                actor="tests",
            ),
        )
        assert result.records >= 6  # every totals_changed so far
        async with running(build_alerts(settings)):
            await wait_committed_to_end(settings, USAGE_GROUP, topics.EVENTS_METERING)
            await settled(settings, sessions, usage=False)
        assert len(await stored(sessions, t)) == 4
        assert len(await published(settings, ["alert.raised"])) == 4

    # the structured log is a channel too: one warning per alert raised, none for the replay
    logged = [
        line
        for line in capfd.readouterr().err.splitlines()
        if "alert firing" in line and f"tenantid={t}" in line
    ]
    assert len(logged) == 4
    assert any(
        "rule=tokens-80-100" in line and "subject=single" in line and "threshold=80 " in line
        for line in logged
    )


async def test_percent_of_included_and_spend_follow_the_subscription(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    calls = (await insert_meters(sessions, t, [CALLS]))["calls"]
    # customer c0 on a plan of 10 USD + 0.001 USD per call above 100 included, 20 % tax;
    # one call already in the first hour of the month
    await seed(sessions, t, 1, month, calls.id, 1)
    async with producer(settings) as p, workers(settings):
        await create_rule(
            p,
            sessions,
            t,
            "calls-pct",
            {
                "kind": "usage_threshold",
                "meter": "calls",
                "unit": "percent_of_included",
                "thresholds": ["80", "100"],
            },
        )
        await create_rule(
            p,
            sessions,
            t,
            "spend",
            {"kind": "spend_threshold", "currency": "USD", "thresholds": [1200, 1320]},
        )
        await create_rule(  # another currency: never applies to a USD subscription
            p,
            sessions,
            t,
            "spend-eur",
            {"kind": "spend_threshold", "currency": "EUR", "thresholds": [1]},
        )
        await send_usage(p, [usage(t, f"a{i}", subject="c0", time=now) for i in range(79)])
        await settled(settings, sessions)
        raised = {(a.rule_key, a.threshold): a for a in await stored(sessions, t)}
        # 80 calls are exactly 80 % of the 100 included; the flat fee with tax is 12.00 USD
        assert set(raised) == {("calls-pct", Decimal(80)), ("spend", Decimal(1200))}
        pct = raised[("calls-pct", Decimal(80))]
        assert (pct.value, pct.unit) == (Decimal("80.00"), "percent_of_included")
        assert (pct.period_start, pct.period_end) == (
            month,
            (month + timedelta(days=32)).replace(day=1),
        )
        spend = raised[("spend", Decimal(1200))]
        assert (spend.value, spend.unit, spend.about_type) == (Decimal(1200), "USD", "customer")

        # 1,100 calls: 1,000 billable at 0.001 = 1 USD more, 13.20 USD with tax
        await send_usage(p, [usage(t, f"b{i}", subject="c0", time=now) for i in range(1020)])
        await settled(settings, sessions)
        raised = {(a.rule_key, a.threshold): a for a in await stored(sessions, t)}
        assert set(raised) == {
            ("calls-pct", Decimal(80)),
            ("calls-pct", Decimal(100)),
            ("spend", Decimal(1200)),
            ("spend", Decimal(1320)),
        }
        assert raised[("spend", Decimal(1320))].value == Decimal(1320)
        assert raised[("calls-pct", Decimal(100))].value >= Decimal(100)  # as its batch left it

        # a subject without a subscription: a percent rule has nothing to compare with
        await send_usage(p, [usage(t, f"n{i}", subject="nobody", time=now) for i in range(500)])
        await settled(settings, sessions)
        assert not await stored(sessions, t, subject="nobody")


async def test_lifecycle_acknowledge_resolve_period_end_and_rule_deletion(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    now = datetime.now(UTC)
    clock_offset = [timedelta(0)]

    def clock() -> datetime:
        return datetime.now(UTC) + clock_offset[0]

    await insert_meters(sessions, t, [TOKENS])
    fast = settings.model_copy(update={"alerts_tick_s": 0.2})
    async with (
        producer(settings) as p,
        running(build_metering(settings)),
        running(build_alerts(fast, clock=clock)),
    ):
        rule = {"kind": "usage_threshold", "meter": "tokens", "thresholds": ["10"]}
        await create_rule(p, sessions, t, "ten", rule)
        other = {"kind": "usage_threshold", "meter": "tokens", "thresholds": ["5"]}
        await create_rule(p, sessions, t, "five", other)
        await send_usage(
            p, [tokens(t, f"e{s}", s, 10, now) for s in ("ack", "manual", "ends", "deleted")]
        )
        await settled(settings, sessions)
        ten = {a.subject: a for a in await stored(sessions, t, rule="ten")}
        assert set(ten) == {"ack", "manual", "ends", "deleted"}
        assert {a.state for a in ten.values()} == {"firing"}

        ack = AcknowledgeAlert(source="tests", tenantid=t, data=AlertRef(alert_id=ten["ack"].id))
        assert (await command(p, sessions, ack))["state"] == "acknowledged"
        again = AcknowledgeAlert(source="tests", tenantid=t, data=AlertRef(alert_id=ten["ack"].id))
        assert (await command(p, sessions, again))["state"] == "acknowledged"  # no change
        manual = ResolveAlert(
            source="tests", tenantid=t, data=AlertRef(alert_id=ten["manual"].id, note="INC-7")
        )
        assert (await command(p, sessions, manual))["state"] == "resolved"
        deleted = DeleteAlertRule(source="tests", tenantid=t, data=RuleRef(key="five"))
        assert (await command(p, sessions, deleted))["resolved"] == 4

        by_subject = {a.subject: a for a in await stored(sessions, t, rule="ten")}
        assert by_subject["ack"].state == "acknowledged" and by_subject["ack"].acknowledged_at
        assert by_subject["manual"].state == "resolved"
        assert by_subject["manual"].resolution == "resolved by hand: INC-7"
        assert {a.state for a in await stored(sessions, t, rule="five")} == {"resolved"}

        # the month ends: every open period alert resolves on the next sweep
        end = ten["ends"].period_end
        assert end is not None
        clock_offset[0] = end - datetime.now(UTC) + timedelta(seconds=1)

        async def all_resolved() -> bool:
            return {a.state for a in await stored(sessions, t, rule="ten")} == {"resolved"}

        await wait_for(all_resolved, timeout_s=15)
        ends = next(a for a in await stored(sessions, t, rule="ten") if a.subject == "ends")
        assert ends.resolution == "period ended"
        await settled(settings, sessions, usage=False)

    events = await published(settings)
    kinds = [(e["type"], e["data"]["rule"], e["subject"]) for e in events]
    for subject in ("ack", "manual", "ends", "deleted"):
        assert kinds.count(("alert.raised", "ten", subject)) == 1
        assert kinds.count(("alert.resolved", "ten", subject)) == 1
        assert kinds.count(("alert.resolved", "five", subject)) == 1
    assert kinds.count(("alert.acknowledged", "ten", "ack")) == 1
    assert len(events) == 4 * 4 + 1


async def test_anomaly_on_a_synthetic_week_of_hourly_usage(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    now = datetime.now(UTC)
    await insert_meters(sessions, t, [TOKENS])
    week = [8, 12, 10, 9, 11, 10, 10]  # the same hour on each of the 7 days before: mean 10
    history = [
        tokens(t, f"{s}-h{d}", s, n, now - timedelta(days=d))
        for s in ("spiky", "steady")
        for d, n in zip(range(7, 0, -1), week, strict=True)
    ]
    # other hours of those days do not count: only the same hour does
    noise = [
        tokens(t, f"noise{d}", "steady", 1000, now - timedelta(days=d, hours=3)) for d in (1, 2)
    ]
    async with producer(settings) as p, workers(settings):
        rule = {"kind": "anomaly", "meter": "tokens", "factor": "3"}
        await create_rule(p, sessions, t, "spike", rule)
        await send_usage(p, [*history, *noise])
        await settled(settings, sessions)
        assert not await stored(sessions, t)  # history alone is never "the last hour"
        await send_usage(
            p,
            [
                tokens(t, "spiky-now", "spiky", 31, now),  # above 3 x 10
                tokens(t, "steady-now", "steady", 30, now),  # exactly 3 x 10: not above
                tokens(t, "new-now", "newcomer", 10_000, now),  # no history, no baseline
            ],
        )
        await settled(settings, sessions)
        [alert] = await stored(sessions, t)
        assert (alert.subject, alert.kind, alert.value, alert.threshold) == (
            "spiky",
            "anomaly",
            Decimal(31),
            Decimal(30),
        )
        hour = now.replace(minute=0, second=0, microsecond=0)
        assert (alert.period_start, alert.period_end) == (hour, hour + timedelta(hours=1))
        # more usage in the same hour: still one alert for that hour
        await send_usage(p, [tokens(t, "spiky-more", "spiky", 50, now)])
        await settled(settings, sessions)
        assert len(await stored(sessions, t)) == 1
