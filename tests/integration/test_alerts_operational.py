"""Operational alert rules against the real broker and PostgreSQL: failed payments and
exhausted dunning from the payments topic, disabled webhook endpoints from the webhooks
topic, overdue invoices from the sweep, and dead letters of any ``*.dlq`` topic (made by
the real metering worker, and garbage written there by hand)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from schemas import topics
from schemas.envelope import CloudEvent
from schemas.payments import (
    DunningData,
    DunningExhausted,
    PaymentData,
    PaymentFailed,
    PaymentFailureData,
    PaymentSucceeded,
)
from schemas.webhooks import (
    EndpointDeleted,
    EndpointDeletedData,
    EndpointDisabled,
    EndpointDisabledData,
    EndpointEnabled,
    EndpointEnabledData,
)
from tests.conftest import TenantKey, make_tenant
from tests.integration.alerts_support import (
    create_rule,
    dead_letters_settled,
    published,
    settled,
    stored,
)
from tests.integration.payments_support import seed_invoice
from tests.integration.support import (
    Sessions,
    insert_meters,
    producer,
    read_topic,
    running,
    send_raw,
    send_usage,
    usage,
)
from workers.alerts.app import build as build_alerts
from workers.alerts.service import Alert
from workers.devstack import wait_for
from workers.metering.app import build as build_metering
from workers.runtime.topics import admin_client
from workers.settings import Settings

PAYMENT_FAILED = {"kind": "operational", "condition": "payment_failed"}
DUNNING_EXHAUSTED = {"kind": "operational", "condition": "dunning_exhausted"}
INVOICE_OVERDUE = {"kind": "operational", "condition": "invoice_overdue"}
ENDPOINT_DISABLED = {"kind": "operational", "condition": "webhook_endpoint_disabled"}
DEAD_LETTER = {"kind": "operational", "condition": "dead_letter"}


async def emit(p: AIOKafkaProducer, topic: str, event: CloudEvent, key: str) -> bytes:
    value = event.to_json()
    await send_raw(p, topic, value, f"{event.tenantid}:{key}".encode())
    return value


RETRY_AT = datetime(2031, 1, 4, 9, 0, tzinfo=UTC)


def failed(
    tenant: str, invoice: str, attempt: int, next_attempt_at: datetime | None = RETRY_AT
) -> PaymentFailed:
    return PaymentFailed(
        source="tests/payments",
        tenantid=tenant,
        subject=invoice,
        data=PaymentFailureData(
            payment_id=f"pi_{invoice}_{attempt}",
            invoice_id=invoice,
            customer="cust-1",
            amount=4200,
            currency="EUR",
            attempt=attempt,
            failure_code="card_declined",
            failure_message="Your card was declined.",
            next_attempt_at=next_attempt_at,
        ),
    )


def exhausted(tenant: str, invoice: str) -> DunningExhausted:
    return DunningExhausted(
        source="tests/payments",
        tenantid=tenant,
        subject=invoice,
        data=DunningData(
            invoice_id=invoice, customer="cust-1", amount=4200, currency="EUR", attempts=4
        ),
    )


def by_id(alerts: list[Alert]) -> dict[str, Alert]:
    return {a.id: a for a in alerts}


async def topic_names(settings: Settings) -> set[str]:
    client = await admin_client(settings.kafka_bootstrap)
    try:
        return set(await client.list_topics())
    finally:
        await client.close()


async def test_payment_failures_alert_per_attempt_once_and_resolve_when_the_invoice_is_paid(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    other = (await make_tenant(sessions, "globex")).tenant_id
    async with producer(settings) as p, running(build_alerts(settings)):
        await create_rule(p, sessions, t, "payments", PAYMENT_FAILED)
        await create_rule(p, sessions, t, "dunning", DUNNING_EXHAUSTED)

        first = await emit(p, topics.EVENTS_PAYMENTS, failed(t, "inv-1", 1), "cust-1")
        await emit(p, topics.EVENTS_PAYMENTS, failed(t, "inv-1", 2), "cust-1")
        await emit(p, topics.EVENTS_PAYMENTS, failed(other, "inv-9", 1), "cust-1")  # no rule
        await settled(settings, sessions, usage=False)
        raised = await stored(sessions, t, rule="payments")
        assert len(raised) == 2
        for a, attempt in zip(raised, (1, 2), strict=True):
            assert (a.kind, a.condition, a.state, a.subject) == (
                "operational",
                "payment_failed",
                "firing",
                "cust-1",
            )
            assert (a.value, a.unit) == (Decimal(4200), "EUR")
            assert (a.about_type, a.about_id, a.about_href) == (
                "invoice",
                "inv-1",
                "/v1/invoices/inv-1",
            )
            assert f"(attempt {attempt})" in a.message and "42.00 EUR" in a.message
            assert "Your card was declined." in a.message
        assert not await stored(sessions, other)

        # the first event redelivered as is, and attempt 2 published again under a new id
        await send_raw(p, topics.EVENTS_PAYMENTS, first, f"{t}:cust-1".encode())
        await emit(p, topics.EVENTS_PAYMENTS, failed(t, "inv-1", 2), "cust-1")
        # dunning gives up on another invoice; its event arrives twice, with two ids
        await emit(p, topics.EVENTS_PAYMENTS, exhausted(t, "inv-2"), "cust-1")
        await emit(p, topics.EVENTS_PAYMENTS, exhausted(t, "inv-2"), "cust-1")
        await settled(settings, sessions, usage=False)
        assert by_id(await stored(sessions, t, rule="payments")) == by_id(raised)
        [dunning] = await stored(sessions, t, rule="dunning")
        assert (dunning.condition, dunning.about_id, dunning.value, dunning.unit) == (
            "dunning_exhausted",
            "inv-2",
            Decimal(4200),
            "EUR",
        )
        assert "after 4 attempts" in dunning.message

        # the invoice is paid: both failures resolve; the other invoice's alert stays
        paid = PaymentSucceeded(
            source="tests/payments",
            tenantid=t,
            subject="inv-1",
            data=PaymentData(
                payment_id="pi_ok", invoice_id="inv-1", customer="cust-1", amount=4200,
                currency="EUR",
            ),
        )  # fmt: skip
        await emit(p, topics.EVENTS_PAYMENTS, paid, "cust-1")
        await settled(settings, sessions, usage=False)
        after = await stored(sessions, t, rule="payments")
        assert [(a.state, a.resolution) for a in after] == [("resolved", "payment succeeded")] * 2
        assert all(a.resolved_at is not None for a in after)
        assert [a.state for a in await stored(sessions, t, rule="dunning")] == ["firing"]

    events = await published(settings)
    assert sorted((e["type"], e["data"]["rule"]) for e in events) == [
        ("alert.raised", "dunning"),
        ("alert.raised", "payments"),
        ("alert.raised", "payments"),
        ("alert.resolved", "payments"),
        ("alert.resolved", "payments"),
    ]
    assert {e["tenantid"] for e in events} == {t}
    resolved = [e for e in events if e["type"] == "alert.resolved"]
    assert {e["data"]["alert_id"] for e in resolved} == set(by_id(raised))
    assert {e["causationid"] for e in resolved} == {paid.id}
    assert all(e["data"]["resolution"] == "payment succeeded" for e in resolved)
    raised_event = next(e for e in events if e["data"]["alert_id"] == raised[0].id)
    assert raised_event["data"]["about"] == {
        "type": "invoice",
        "id": "inv-1",
        "href": "/v1/invoices/inv-1",
    }
    assert (raised_event["data"]["value"], raised_event["data"]["unit"]) == ("4200", "EUR")


async def overdue(sessions: Sessions, tenant: str, invoice: str, due_at: datetime) -> None:
    """A finalized, unpaid invoice of 1,250 USD cents due at ``due_at``."""
    await seed_invoice(sessions, tenant, invoice, f"cust-{invoice}", 1250)
    async with sessions() as session, session.begin():
        await session.execute(
            text("UPDATE invoices SET due_at = :due WHERE tenant_id = :t AND id = :id"),
            {"due": due_at, "t": tenant, "id": invoice},
        )


async def test_an_overdue_invoice_alerts_on_the_sweep_and_resolves_once_paid(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    other = (await make_tenant(sessions, "globex")).tenant_id
    now = datetime.now(UTC)
    await overdue(sessions, t, "inv-late", now - timedelta(days=2))
    await overdue(sessions, t, "inv-not-yet", now + timedelta(days=3))
    await overdue(sessions, other, "inv-globex", now - timedelta(days=2))  # no rule there
    fast = settings.model_copy(update={"alerts_tick_s": 0.1})
    async with producer(settings) as p, running(build_alerts(fast)):
        await create_rule(p, sessions, t, "overdue", INVOICE_OVERDUE)

        async def raised() -> list[Alert]:
            return await stored(sessions, t)

        # one sweep looks at every invoice: once the late one alerts, the other was seen
        [late] = await wait_for(raised, timeout_s=15)
        assert (late.condition, late.state, late.subject) == (
            "invoice_overdue",
            "firing",
            "cust-inv-late",
        )
        assert (late.about_type, late.about_id, late.value, late.unit) == (
            "invoice",
            "inv-late",
            Decimal(1250),
            "USD",
        )
        assert "INV-inv-late" in late.message and "12.50 USD" in late.message
        assert not await stored(sessions, other)

        async with sessions() as session, session.begin():
            await session.execute(
                text(
                    "UPDATE invoices SET status = 'paid', paid_at = now(), amount_paid = total"
                    " WHERE tenant_id = :t AND id = 'inv-late'"
                ),
                {"t": t},
            )

        async def resolved() -> Alert | None:
            [a] = await stored(sessions, t)
            return a if a.state == "resolved" else None

        done = await wait_for(resolved, timeout_s=15)
        assert (done.id, done.resolution) == (late.id, "invoice paid")
        await settled(settings, sessions, usage=False)
        assert len(await stored(sessions, t)) == 1  # a paid invoice never alerts again

    events = await published(settings)
    assert [(e["type"], e["data"]["alert_id"]) for e in events] == [
        ("alert.raised", late.id),
        ("alert.resolved", late.id),
    ]
    assert events[1]["data"]["resolution"] == "invoice paid"


async def test_a_disabled_webhook_endpoint_alerts_and_resolves_when_enabled(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    since = datetime(2031, 3, 2, 8, 30, tzinfo=UTC)
    async with producer(settings) as p, running(build_alerts(settings)):
        await create_rule(p, sessions, t, "endpoints", ENDPOINT_DISABLED)
        disabled = EndpointDisabled(
            source="tests/webhooks",
            tenantid=t,
            data=EndpointDisabledData(endpoint_id="ep_1", reason="failing", failing_since=since),
        )
        value = await emit(p, topics.EVENTS_WEBHOOKS, disabled, "ep_1")
        await send_raw(p, topics.EVENTS_WEBHOOKS, value, f"{t}:ep_1".encode())  # redelivered
        await settled(settings, sessions, usage=False)
        [a] = await stored(sessions, t)
        assert (a.condition, a.state, a.subject) == ("webhook_endpoint_disabled", "firing", None)
        assert (a.about_type, a.about_id, a.about_href) == (
            "webhook_endpoint",
            "ep_1",
            "/v1/webhooks/endpoints/ep_1",
        )
        assert "failing" in a.message and "2031-03-02 08:30" in a.message

        enabled = EndpointEnabled(
            source="tests/webhooks", tenantid=t, data=EndpointEnabledData(endpoint_id="ep_1")
        )
        await emit(p, topics.EVENTS_WEBHOOKS, enabled, "ep_1")
        await settled(settings, sessions, usage=False)
        [after] = await stored(sessions, t)
        assert (after.id, after.state, after.resolution) == (a.id, "resolved", "endpoint enabled")

        # disabled again (a new alert: the first one is closed), then deleted
        again = EndpointDisabled(
            source="tests/webhooks",
            tenantid=t,
            data=EndpointDisabledData(endpoint_id="ep_1", reason="manual"),
        )
        await emit(p, topics.EVENTS_WEBHOOKS, again, "ep_1")
        deleted = EndpointDeleted(
            source="tests/webhooks", tenantid=t, data=EndpointDeletedData(endpoint_id="ep_1")
        )
        await emit(p, topics.EVENTS_WEBHOOKS, deleted, "ep_1")
        await settled(settings, sessions, usage=False)
        [first, second] = await stored(sessions, t)
        assert first.id == a.id and second.id != a.id
        assert (second.state, second.resolution) == ("resolved", "endpoint deleted")
        assert "disabled: manual" in second.message

    events = await published(settings)
    assert [(e["type"], e["data"]["alert_id"]) for e in events] == [
        ("alert.raised", a.id),
        ("alert.resolved", a.id),
        ("alert.raised", second.id),
        ("alert.resolved", second.id),
    ]
    assert {e["data"]["about"]["type"] for e in events} == {"webhook_endpoint"}


async def test_dead_letters_alert_with_their_reason_and_garbage_on_a_dlq_stops_nothing(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    await insert_meters(
        sessions, t, [{"key": "calls", "event_type": "api.call", "aggregation": "count"}]
    )
    dlq = topics.dlq(topics.USAGE)
    key = f"{t}:cust-1".encode()  # usage keys: its dead letters share one DLQ partition
    async with (
        producer(settings) as p,
        running(build_metering(settings)),
        running(build_alerts(settings)),
    ):
        await create_rule(p, sessions, t, "dead-letters", DEAD_LETTER)
        await send_usage(p, [usage(t, "e1", type="api.unknown", subject="cust-1")])
        [record] = await read_topic(settings, dlq, 1)
        await dead_letters_settled(settings, sessions)
        [a] = await stored(sessions, t)
        ref = f"{record.partition}:{record.offset}"
        assert (a.condition, a.state, a.subject) == ("dead_letter", "firing", "cust-1")
        assert (a.about_type, a.about_id, a.about_href) == (
            "dead_letter",
            f"{dlq}/{ref}",
            f"billstream dlq show {dlq} {ref}",
        )
        assert "no meter reads event type 'api.unknown'" in a.message
        assert f"from {topics.USAGE}" in a.message

        # garbage on dead-letter topics: not JSON, JSON but no event, an unknown tenant
        for value in (b"\xff\xfenot json", b"[1, 2]", b'{"tenantid": 7}', b"{}"):
            await send_raw(p, dlq, value, key)
        unknown = usage("nobody", "e9", type="api.unknown").to_json()
        await send_raw(p, topics.dlq(topics.EVENTS_INVOICING), unknown, b"nobody")
        # and then another real dead letter behind them on the same partition
        await send_usage(p, [usage(t, "e2", type="api.unknown", subject="cust-1")])
        await read_topic(settings, dlq, 6)
        await dead_letters_settled(settings, sessions)
        alerts = await stored(sessions, t)
        assert len(alerts) == 2
        assert alerts[1].about_href == f"billstream dlq show {dlq} {record.partition}:5"
        # nothing of it was dead-lettered again
        for t_name in (dlq, topics.dlq(topics.EVENTS_INVOICING)):
            assert t_name + ".dlq" not in await topic_names(settings)

    events = await published(settings)
    assert [e["type"] for e in events] == ["alert.raised"] * 2
    assert events[0]["data"]["about"]["type"] == "dead_letter"


async def test_a_dead_letter_with_a_subject_too_long_or_nested_too_deep_is_not_dead_lettered_again(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    """What lands in a dead-letter topic is by nature what broke the rules: an event whose
    subject is longer than any subject may be (metering refused it for that), or JSON nested
    deeper than a parser goes. The first still alerts; the second is logged; neither makes
    the alerts worker dead-letter a dead letter."""
    t = tenant.tenant_id
    dlq = topics.dlq(topics.USAGE)
    key = f"{t}:cust-1".encode()
    long_subject = json.loads(usage(t, "e1", type="api.unknown").to_json())
    long_subject["subject"] = "s" * 300
    async with producer(settings) as p, running(build_alerts(settings)):
        await create_rule(p, sessions, t, "dead-letters", DEAD_LETTER)
        await send_raw(p, dlq, json.dumps(long_subject).encode(), key)
        await send_raw(p, dlq, b"[" * 100_000, key)
        await send_raw(p, dlq, usage(t, "e2", type="api.unknown").to_json(), key)
        await dead_letters_settled(settings, sessions)
        # a dead letter's dead letter goes to a topic no one creates (production brokers
        # do not auto-create topics: the outbox relay would wait on it forever)
        assert topics.dlq(dlq) not in await topic_names(settings)
        by_offset = {a.about_id.rsplit(":", 1)[1]: a for a in await stored(sessions, t)}
        assert set(by_offset) == {"0", "2"}  # the long subject alerts; the deep JSON does not
        assert by_offset["0"].subject is None and by_offset["2"].subject == "cust-1"


async def test_times_in_alert_messages_are_utc_whatever_offset_the_event_carried(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    """The messages say "UTC": a time sent with another offset is converted, not relabelled."""
    t = tenant.tenant_id
    paris = timezone(timedelta(hours=2))
    new_york = timezone(timedelta(hours=-5))
    disabled = EndpointDisabled(
        source="tests/webhooks",
        tenantid=t,
        data=EndpointDisabledData(
            endpoint_id="ep_1",
            reason="failing",
            failing_since=datetime(2031, 3, 2, 10, 30, tzinfo=paris),
        ),
    )
    retry = datetime(2031, 1, 3, 23, 0, tzinfo=new_york)
    payment = failed(t, "inv-1", 1, next_attempt_at=retry)
    async with producer(settings) as p, running(build_alerts(settings)):
        await create_rule(p, sessions, t, "endpoints", ENDPOINT_DISABLED)
        await create_rule(p, sessions, t, "payments", PAYMENT_FAILED)
        await emit(p, topics.EVENTS_WEBHOOKS, disabled, "ep_1")
        await emit(p, topics.EVENTS_PAYMENTS, payment, "cust-1")
        await settled(settings, sessions, usage=False)
        [endpoint] = await stored(sessions, t, rule="endpoints")
        [paid] = await stored(sessions, t, rule="payments")
    assert "failing since 2031-03-02 08:30 UTC" in endpoint.message, endpoint.message
    assert "retried at 2031-01-04 04:00 UTC" in paid.message, paid.message
