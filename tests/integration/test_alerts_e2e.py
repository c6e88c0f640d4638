"""Alerts end to end, as a tenant sees them: everything over HTTP against the real ingress,
the metering, alerts and webhooks workers, the real broker and PostgreSQL, and a local HTTP
receiver whose deliveries are checked with the independent ``standardwebhooks`` package."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from schemas import topics
from schemas.groups import webhooks_fanout
from tests.conftest import TenantKey
from tests.integration.alerts_support import settled
from tests.integration.http import Client, ingress
from tests.integration.support import Sessions, running, wait_committed_to_end
from tests.integration.test_webhooks import Receiver, wait_requests
from workers.alerts.app import build as build_alerts
from workers.devstack import wait_for
from workers.metering.app import build as build_metering
from workers.settings import Settings
from workers.webhooks.app import build as build_webhooks

TOKENS = {
    "key": "tokens",
    "event_type": "llm.completion",
    "aggregation": "sum",
    "value_property": "$.tokens",
}
RULE = {
    "key": "tokens-100",
    "name": "100 tokens",
    "rule": {"kind": "usage_threshold", "meter": "tokens", "thresholds": ["100"]},
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def tokens(i: int, n: int, at: datetime, subject: str = "cust-42") -> dict[str, Any]:
    return {
        "id": f"evt-{i}",
        "source": "tests",
        "type": "llm.completion",
        "subject": subject,
        "time": at.isoformat().replace("+00:00", "Z"),
        "data": {"tokens": n},
    }


async def post_events(api: Client, events: list[dict[str, Any]]) -> None:
    r = await api.send("POST", "/v1/events", {"events": events})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": len(events)}


async def delivered(settings: Settings, sessions: Sessions, api: Client, endpoint: str) -> None:
    """Wait until the alerts the usage so far raised reached the webhooks worker and every
    message of ``endpoint`` is delivered (none pending)."""
    await settled(settings, sessions)
    await wait_committed_to_end(
        settings, webhooks_fanout(topics.EVENTS_ALERTS), topics.EVENTS_ALERTS
    )

    async def done() -> bool:
        page = await api.get(f"/v1/webhooks/endpoints/{endpoint}/messages")
        return all(m["status"] == "succeeded" for m in page["data"])

    await wait_for(done, timeout_s=20)


async def test_usage_over_http_crosses_a_rule_and_the_receiver_gets_one_signed_alert(
    settings: Settings, sessions: Sessions, tenant: TenantKey, receiver: Receiver
) -> None:
    ws = settings.model_copy(
        update={
            "webhook_allowed_networks": ["127.0.0.0/8"],
            "webhook_poll_interval_s": 0.05,
            "webhook_timeout_s": 5.0,
        }
    )
    now = datetime.now(UTC)
    async with (
        running(build_metering(ws)),
        running(build_alerts(ws)),
        running(build_webhooks(ws)),
        ingress(ws) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        api = Client(http, tenant)
        await api.ok("POST", "/v1/meters", TOKENS)
        r = await api.send(
            "POST",
            "/v1/webhooks/endpoints",
            {"url": receiver.url("/alerts"), "event_types": ["alert.*"]},
        )
        assert r.status_code == 202, r.text
        endpoint = r.json()["endpoint_id"]
        assert (await api.outcome(r.json()["command_id"]))["status"] == "succeeded"
        secret = (await api.get(f"/v1/webhooks/endpoints/{endpoint}/secret"))["key"]
        # an endpoint of the same tenant not subscribed to alerts
        other = {"url": receiver.url("/invoices"), "event_types": ["invoice.*"]}
        await api.ok("POST", "/v1/webhooks/endpoints", other)
        await api.ok("POST", "/v1/alert-rules", RULE)
        assert (await api.get("/v1/alert-rules/tokens-100"))["rule"]["thresholds"] == ["100"]

        await post_events(api, [tokens(1, 60, now)])
        await delivered(ws, sessions, api, endpoint)
        assert not receiver.to("/alerts")  # 60 < 100

        await post_events(api, [tokens(2, 40, now), tokens(3, 20, now)])
        [got] = await wait_requests(receiver, 1, "/alerts")
        # verified by an independent implementation of the Standard Webhooks spec
        event = Webhook(secret).verify(got.body, got.headers)
        assert event == json.loads(got.body)
        assert (event["type"], event["tenantid"], event["subject"]) == (
            "alert.raised",
            tenant.tenant_id,
            "cust-42",
        )
        data = event["data"]
        assert (data["rule"], data["kind"], data["condition"], data["state"]) == (
            "tokens-100",
            "usage_threshold",
            "tokens",
            "firing",
        )
        assert (data["subject"], data["threshold"], data["unit"]) == ("cust-42", "100", "quantity")
        assert data["value"] in ("100", "120")  # as the batch that crossed it left the total
        assert data["about"]["href"].startswith("/v1/meters/tokens/usage?subject=cust-42")

        # more usage above the threshold, redelivered events: still one alert
        await post_events(api, [tokens(4, 500, now), tokens(3, 20, now)])
        await delivered(ws, sessions, api, endpoint)
        assert len(receiver.to("/alerts")) == 1

        firing = await api.get("/v1/alerts", state="firing")
        [alert] = firing["data"]
        assert alert["alert_id"] == data["alert_id"] and firing["next_cursor"] is None
        assert (alert["rule"], alert["subject"], alert["threshold"]) == (
            "tokens-100",
            "cust-42",
            "100",
        )

        # acknowledged over HTTP: the receiver hears of it, the alert is no longer firing
        await api.ok("POST", f"/v1/alerts/{alert['alert_id']}/acknowledge", {"note": "on it"})
        [_, ack] = await wait_requests(receiver, 2, "/alerts")
        acked = Webhook(secret).verify(ack.body, ack.headers)
        assert (acked["type"], acked["data"]["alert_id"]) == (
            "alert.acknowledged",
            alert["alert_id"],
        )
        assert (await api.get("/v1/alerts", state="firing"))["data"] == []
        [same] = (await api.get("/v1/alerts", state="acknowledged"))["data"]
        assert same["alert_id"] == alert["alert_id"] and same["acknowledged_at"]
        assert not receiver.to("/invoices")
