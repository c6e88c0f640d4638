"""Slack-format endpoints against the real broker, PostgreSQL, ingress and HTTP receivers
on loopback: an alert reaches a Slack endpoint as a Slack message and a standard endpoint
as the unchanged CloudEvent, both signed; the format is set, shown and changed through
the API; a resend delivers the body stored at fan-out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from standardwebhooks import Webhook

from schemas import topics
from schemas.alerts import About, AlertData, AlertRaised
from schemas.webhooks import EndpointCreated, EndpointUpdated
from tests.conftest import TenantKey
from tests.integration.support import Sessions, producer, read_topic, running, send_raw
from tests.integration.test_webhooks import (
    Receiver,
    auth,
    ingress,
    succeeded,
    wait_requests,
)
from workers.devstack import wait_for
from workers.settings import Settings
from workers.webhooks.app import build


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def wsettings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhook_allowed_networks": ["127.0.0.0/8"],
            "webhook_poll_interval_s": 0.05,
            "webhook_timeout_s": 5.0,
        }
    )


def alert(tenant: str, message: str) -> AlertRaised:
    now = datetime.now(UTC)
    return AlertRaised(
        source="billstream/alerts",
        tenantid=tenant,
        subject="cust-42",
        data=AlertData(
            alert_id="al_" + "ab" * 16,
            rule="tokens-80",
            kind="usage_threshold",
            condition="tokens",
            subject="cust-42",
            state="firing",
            period_start=datetime(2026, 11, 1, tzinfo=UTC),
            period_end=datetime(2026, 12, 1, tzinfo=UTC),
            threshold=Decimal(80000),
            value=Decimal(80125),
            unit="quantity",
            about=About(type="meter_usage", id="tokens", href="/v1/meters/tokens/usage"),
            message=message,
            raised_at=now,
        ),
    )


async def publish_alert(wsettings: Settings, event: AlertRaised) -> bytes:
    value = event.to_json()
    async with producer(wsettings) as p:
        await send_raw(p, topics.EVENTS_ALERTS, value, event.tenantid.encode())
    return value


async def secret_of(c: Any, tenant: TenantKey, ep: str) -> str:
    r = await c.get(f"/v1/webhooks/endpoints/{ep}/secret", headers=auth(tenant))
    key: str = r.json()["key"]
    return key


async def test_an_alert_reaches_slack_as_a_message_and_a_standard_endpoint_unchanged(
    wsettings: Settings, sessions: Sessions, tenant: TenantKey, hooks: Receiver
) -> None:
    t = tenant.tenant_id
    async with running(build(wsettings)), ingress(wsettings) as c:
        # a Slack endpoint and a standard one, both for alerts
        r = await c.post(
            "/v1/webhooks/endpoints",
            json={"url": hooks.url("/slack"), "event_types": ["alert.*"], "format": "slack"},
            headers=auth(tenant),
        )
        await succeeded(c, tenant, r)
        slack_ep = r.json()["endpoint_id"]
        r = await c.post(
            "/v1/webhooks/endpoints",
            json={"url": hooks.url("/standard"), "event_types": ["alert.*"]},
            headers=auth(tenant),
        )
        await succeeded(c, tenant, r)
        standard_ep = r.json()["endpoint_id"]
        r = await c.post(
            "/v1/webhooks/endpoints",
            json={"url": hooks.url("/x"), "format": "teams"},
            headers=auth(tenant),
        )
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "format", r.text

        view = (await c.get(f"/v1/webhooks/endpoints/{slack_ep}", headers=auth(tenant))).json()
        assert view["format"] == "slack"
        listed = (await c.get("/v1/webhooks/endpoints", headers=auth(tenant))).json()
        assert {e["id"]: e["format"] for e in listed} == {
            slack_ep: "slack",
            standard_ep: "standard",
        }
        slack_secret = await secret_of(c, tenant, slack_ep)
        standard_secret = await secret_of(c, tenant, standard_ep)

        event = alert(t, "cust-42 used 80125 tokens (threshold 80000) <!channel>")
        body = await publish_alert(wsettings, event)
        [to_slack] = await wait_requests(hooks, 1, "/slack")
        [to_standard] = await wait_requests(hooks, 1, "/standard")

        # the standard endpoint: the CloudEvent byte for byte, verifiably signed
        assert to_standard.body == body
        assert Webhook(standard_secret).verify(to_standard.body, to_standard.headers) == (
            json.loads(body)
        )
        # the Slack endpoint: a Slack message (signed too; Slack ignores the headers)
        message = json.loads(to_slack.body)
        assert set(message) == {"text", "blocks"}
        assert message["text"].startswith(":rotating_light: Alert raised [acme]: cust-42 used")
        assert message["text"].endswith("&lt;!channel&gt;")  # no mention
        assert all(b["type"] in ("section", "context") for b in message["blocks"])
        assert "`tokens-80`" in to_slack.body.decode()
        assert to_slack.headers["content-type"] == "application/json"
        Webhook(slack_secret).verify(to_slack.body, to_slack.headers)
        assert to_slack.msg_id != to_standard.msg_id

        # PATCH the format: later events are sent as the CloudEvent
        r = await c.patch(
            f"/v1/webhooks/endpoints/{slack_ep}", json={"format": "standard"}, headers=auth(tenant)
        )
        await succeeded(c, tenant, r)
        view = (await c.get(f"/v1/webhooks/endpoints/{slack_ep}", headers=auth(tenant))).json()
        assert view["format"] == "standard"
        later = await publish_alert(wsettings, alert(t, "again"))
        [_, now_standard] = await wait_requests(hooks, 2, "/slack")
        assert now_standard.body == later
        Webhook(slack_secret).verify(now_standard.body, now_standard.headers)

        # a resend delivers what was stored at fan-out: the first one stays a Slack message
        r = await c.post(
            f"/v1/webhooks/endpoints/{slack_ep}/messages/{to_slack.msg_id}/resend",
            headers=auth(tenant),
        )
        await succeeded(c, tenant, r)
        [*_, resent] = await wait_requests(hooks, 3, "/slack")
        assert resent.msg_id == to_slack.msg_id and resent.body == to_slack.body

        async def recorded() -> bool:
            r = await c.get(f"/v1/webhooks/endpoints/{slack_ep}/messages", headers=auth(tenant))
            data = r.json()["data"]
            return len(data) == 2 and all(m["status"] == "succeeded" for m in data)

        await wait_for(recorded, timeout_s=20)
        events = await read_topic(wsettings, topics.EVENTS_WEBHOOKS, 3)

    created = [
        EndpointCreated.model_validate_json(e.value) for e in events if b"created" in e.value
    ]
    assert {e.data.endpoint_id: e.data.format for e in created} == {
        slack_ep: "slack",
        standard_ep: "standard",
    }
    [updated] = [
        EndpointUpdated.model_validate_json(e.value) for e in events if b"updated" in e.value
    ]
    assert (updated.data.endpoint_id, updated.data.format) == (slack_ep, "standard")
