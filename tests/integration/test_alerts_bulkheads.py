"""Bulkheads in the alerts worker, against the real broker and PostgreSQL: a quarantine
(``ops.quarantined``) raises a ``job_quarantined`` alert for its tenant only; one tenant's
poison row does not stop the sweep (overdue invoices, ended periods) for everyone else."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from schemas import topics
from schemas.envelope import new_id
from schemas.groups import ALERTS_OPERATIONS as OPERATIONS_GROUP
from schemas.ops import ALL_TENANTS, OpsQuarantined, OpsReplayed, QuarantinedData, ReplayedData
from storage.alerts import AlertsRepository
from storage.quarantine import Entry, QuarantineRepository
from tests.conftest import TenantKey, make_tenant
from tests.integration.alerts_support import create_rule, published, settled, stored
from tests.integration.billing_seed import CALLS, seed
from tests.integration.support import (
    Sessions,
    headers,
    insert_meters,
    producer,
    read_all,
    running,
    send_raw,
    send_usage,
    usage,
    wait_committed_to_end,
)
from tests.integration.test_alerts_operational import overdue
from workers.alerts.app import build as build_alerts
from workers.alerts.service import Alert
from workers.devstack import wait_for
from workers.metering.app import build as build_metering
from workers.settings import Settings

A_ALERT, B_ALERT = "al_" + "a" * 32, "al_" + "b" * 32
JOB_QUARANTINED = {"kind": "operational", "condition": "job_quarantined"}
INVOICE_OVERDUE = {"kind": "operational", "condition": "invoice_overdue"}


def quarantined_event(tenant: str, item: str) -> OpsQuarantined:
    return OpsQuarantined(
        source="billstream/payments",
        tenantid=tenant,
        subject=f"invoice/{item}",
        data=QuarantinedData(
            quarantine_id=new_id(),
            job="payments.collect",
            kind="invoice",
            item_id=item,
            reason="IntegrityError: duplicate key value violates unique constraint",
            error="IntegrityError",
            quarantined_at=datetime.now(UTC),
        ),
    )


async def ops_settled(settings: Settings, sessions: Sessions) -> None:
    await wait_committed_to_end(settings, OPERATIONS_GROUP, topics.EVENTS_OPS)
    await settled(settings, sessions, usage=False)


async def test_a_quarantine_alerts_its_tenants_job_quarantined_rules_only(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    a = tenant.tenant_id
    b = (await make_tenant(sessions, "globex")).tenant_id
    event = quarantined_event(a, "inv-42")
    async with producer(settings) as p, running(build_alerts(settings)):
        await create_rule(p, sessions, a, "stuck", JOB_QUARANTINED)
        await create_rule(p, sessions, b, "stuck", JOB_QUARANTINED)
        value = event.to_json()
        await send_raw(p, topics.EVENTS_OPS, value, a.encode())
        await send_raw(p, topics.EVENTS_OPS, value, a.encode())  # redelivered: one alert
        # other ops events raise nothing, and one for every tenant is not dead-lettered
        replayed = OpsReplayed(
            source="billstream/cli",
            tenantid=ALL_TENANTS,
            data=ReplayedData(
                actor="tests", reason="test", host="h", mode="group",
                topic=topics.EVENTS_METERING, group="g", start="earliest", partitions=[],
                messages=0,
            ),
        )  # fmt: skip
        await send_raw(p, topics.EVENTS_OPS, replayed.to_json(), ALL_TENANTS.encode())
        await ops_settled(settings, sessions)

        [alert] = await stored(sessions, a)
        q = event.data.quarantine_id
        assert (alert.rule_key, alert.kind, alert.condition, alert.state, alert.subject) == (
            "stuck", "operational", "job_quarantined", "firing", None,
        )  # fmt: skip
        assert (alert.about_type, alert.about_id, alert.about_href) == (
            "quarantine", q, f"billstream quarantine show {q}",
        )  # fmt: skip
        assert alert.message.startswith(
            "job payments.collect quarantined invoice inv-42: IntegrityError: duplicate key"
        )
        assert await stored(sessions, b) == []

    [raised] = await published(settings, ["alert.raised"])
    assert raised["tenantid"] == a and raised["causationid"] == event.id
    assert raised["data"]["about"] == {
        "type": "quarantine", "id": q, "href": f"billstream quarantine show {q}",
    }  # fmt: skip
    assert (await read_all(settings, topics.dlq(topics.EVENTS_OPS)))[0] == []


def alert_row(
    tenant: str, id: str, *, about_type: str, period_end: datetime, rule: str = "r1"
) -> Alert:
    return Alert(
        id=id, tenant_id=tenant, rule_id=f"{tenant}-{rule}", rule_key=rule,
        kind="usage_threshold", condition="tokens", subject="s1", dedupe=id,
        period_start=period_end - timedelta(days=30), period_end=period_end, threshold=None,
        value=None, unit="quantity", about_type=about_type, about_id="tokens",
        about_href="/v1/meters/tokens/usage", message="tokens crossed", state="firing",
        raised_at=period_end - timedelta(days=1),
    )  # fmt: skip


async def quarantined(sessions: Sessions, tenant: str) -> list[Entry]:
    async with sessions() as db:
        return await QuarantineRepository(db).list(tenant)


async def test_one_tenants_poison_rows_do_not_stop_the_sweep_for_the_others(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    """Tenant A has an overdue invoice whose currency is not a currency (its alert cannot be
    written) and an ended-period alert whose row cannot be made into an event. The sweep
    used to fail as a whole on every tick: B's overdue invoice never alerted and B's ended
    period never resolved. Now A's two rows are quarantined (and A is told), B is swept."""
    a = tenant.tenant_id
    b = (await make_tenant(sessions, "initech")).tenant_id
    now = datetime.now(UTC)
    await overdue(sessions, a, "inv-a-1", now - timedelta(days=3))
    await overdue(sessions, b, "inv-b-1", now - timedelta(days=3))
    settings = settings.model_copy(update={"alerts_tick_s": 0.1})
    async with producer(settings) as p, running(build_alerts(settings)):
        await create_rule(p, sessions, a, "stuck", JOB_QUARANTINED)
        async with sessions() as db, db.begin():
            await db.execute(
                text("UPDATE invoices SET currency = 'ZZZ' WHERE tenant_id = :t AND id = :i"),
                {"t": a, "i": "inv-a-1"},
            )
            ended = now - timedelta(hours=1)
            await AlertsRepository(db).raise_alerts(
                [
                    alert_row(a, A_ALERT, about_type="not-a-type", period_end=ended),
                    alert_row(b, B_ALERT, about_type="meter_usage", period_end=ended),
                ]
            )
        await create_rule(p, sessions, a, "overdue", INVOICE_OVERDUE)
        await create_rule(p, sessions, b, "overdue", INVOICE_OVERDUE)

        async def b_swept() -> bool:
            alerts = {x.rule_key: x for x in await stored(sessions, b)}
            return "overdue" in alerts and alerts["r1"].state == "resolved"

        await wait_for(b_swept, timeout_s=20)
        [b_overdue] = await stored(sessions, b, rule="overdue")
        assert (b_overdue.about_id, b_overdue.state) == ("inv-b-1", "firing")
        [b_period] = await stored(sessions, b, rule="r1")
        assert b_period.resolution == "period ended"

        entries = await wait_for(lambda: _two(quarantined(sessions, a)), timeout_s=20)
        by_job = {e.job: e for e in entries}
        assert set(by_job) == {"alerts.invoice_overdue", "alerts.resolve_ended_periods"}
        invoice, alert = by_job["alerts.invoice_overdue"], by_job["alerts.resolve_ended_periods"]
        assert (invoice.kind, invoice.item_id) == ("invoice", "inv-a-1")
        assert "unknown ISO 4217 currency 'ZZZ'" in invoice.reason
        assert (alert.kind, alert.item_id) == ("alert", A_ALERT)
        assert "ValidationError" in alert.reason
        assert await quarantined(sessions, b) == []

        # A is told, once per quarantine, by its job_quarantined rule
        async def told() -> list[Alert] | None:
            found = await stored(sessions, a, rule="stuck")
            return found if len(found) == 2 else None

        alerts = await wait_for(told, timeout_s=20)
        assert {x.about_id for x in alerts} == {e.id for e in entries}
        assert all(x.about_type == "quarantine" and x.state == "firing" for x in alerts)
        # A's poison rows are left as they were
        assert await stored(sessions, a, rule="overdue") == []
        [a_period] = await stored(sessions, a, rule="r1")
        assert a_period.state == "firing"


async def _two(entries: Any) -> list[Entry] | None:
    found: list[Entry] = await entries
    return found if len(found) == 2 else None


async def test_a_tenants_spend_rule_on_a_broken_plan_is_dead_lettered_and_others_alerted(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    """The usage consumer is a consumer: the runtime splits a batch that fails permanently
    and dead-letters the one message it fails on. Tenant A's plan cannot be read, so its
    spend rule cannot be computed: A's totals event goes to the dead-letter topic with the
    reason, and B's threshold alert from the same batch is raised."""
    a = tenant.tenant_id
    b = (await make_tenant(sessions, "umbrella")).tenant_id
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    calls = (await insert_meters(sessions, a, [CALLS]))["calls"]
    await insert_meters(sessions, b, [CALLS])
    await seed(sessions, a, 1, month, calls.id, 1)
    async with sessions() as db, db.begin():
        await db.execute(
            text(
                """UPDATE plans SET spec = '{"key": "std", "prices": "?"}' WHERE tenant_id = :t"""
            ),
            {"t": a},
        )
    async with producer(settings) as p:
        async with running(build_alerts(settings)):
            await create_rule(
                p, sessions, a, "spend", {"kind": "spend_threshold", "currency": "USD",
                                          "thresholds": [1]},
            )  # fmt: skip
            await create_rule(
                p, sessions, b, "calls", {"kind": "usage_threshold", "meter": "calls",
                                          "thresholds": ["3"]},
            )  # fmt: skip
        # both tenants' usage on the topic before the workers run: one batch of totals
        await send_usage(p, [usage(a, f"a{i}", subject="c0", time=now) for i in range(3)])
        await send_usage(p, [usage(b, f"b{i}", subject="x", time=now) for i in range(3)])
        async with running(build_metering(settings)), running(build_alerts(settings)):
            await settled(settings, sessions)
            [alert] = await stored(sessions, b)
            assert (alert.rule_key, alert.subject, alert.threshold) == ("calls", "x", Decimal(3))
            assert await stored(sessions, a) == []

            async def dead_lettered() -> list[Any] | None:
                records = (await read_all(settings, topics.dlq(topics.EVENTS_METERING)))[0]
                return records or None

            [record] = await wait_for(dead_lettered, timeout_s=20)
            assert json.loads(record.value)["tenantid"] == a
            assert "ValidationError" in headers(record)["billstream-dlq-reason"]
