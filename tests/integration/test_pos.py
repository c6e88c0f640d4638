"""Point-of-sale receipts end to end: HTTP ingress → ``billstream.integrations.pos.v1`` →
the tenant's mapping (a command) → usage events through the outbox → metering. Refunds
reduce gross sales; a receipt sent twice counts once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import uvicorn

from schemas import groups, topics
from tests.conftest import TenantKey, make_tenant
from tests.integration.support import (
    Sessions,
    read_topic,
    running,
    wait_committed_to_end,
    wait_outbox_drained,
)
from workers.devstack import free_port, wait_for
from workers.ingress.app import create_app
from workers.metering.app import build as build_metering
from workers.pos.app import build as build_pos
from workers.settings import Settings

GROSS_SALES = {
    "key": "gross_sales",
    "event_type": "pos.gross_sales",
    "aggregation": "sum",
    "value_property": "$.amount",
    "group_by": {"location": "$.location", "currency": "$.currency"},
}
TRANSACTIONS = {
    "key": "transactions",
    "event_type": "pos.transaction",
    "aggregation": "count",
    "group_by": {"location": "$.location"},
}


def receipt(
    id: str, location: str, total: str, *, kind: str = "sale", time: str = "2026-11-22T10:15:00Z"
) -> dict[str, Any]:
    return {
        "id": id,
        "type": kind,
        "location": location,
        "time": time,
        "currency": "EUR",
        "payment_method": "card",
        "lines": [
            {"sku": "COFFEE", "quantity": 1, "unit_price": total, "tax": "0", "total": total}
        ],
        "total": total,
    }


class Api:
    def __init__(self, client: httpx.AsyncClient, key: TenantKey) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key.api_key}"}

    async def outcome(self, command_id: str) -> dict[str, Any]:
        async def done() -> dict[str, Any] | None:
            body: dict[str, Any] = (
                await self.client.get(f"/v1/commands/{command_id}", headers=self.headers)
            ).json()
            return body if body["status"] != "pending" else None

        result: dict[str, Any] = await wait_for(done, timeout_s=20)
        return result

    async def command(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.client.request(method, path, json=body, headers=self.headers)
        assert r.status_code == 202, r.text
        outcome = await self.outcome(r.json()["command_id"])
        assert outcome["status"] == "succeeded", outcome
        return outcome

    async def post_receipts(self, receipts: list[dict[str, Any]]) -> httpx.Response:
        return await self.client.post(
            "/v1/integrations/pos/generic/transactions",
            json={"receipts": receipts},
            headers=self.headers,
        )

    async def by(self, meter: str, group: str) -> dict[str, Decimal]:
        r = await self.client.get(
            f"/v1/meters/{meter}/usage", params={"group_by": group}, headers=self.headers
        )
        assert r.status_code == 200, r.text
        rows = json.loads(r.text, parse_float=Decimal)["data"]
        return {row["group_by"][group]: Decimal(row["value"]) for row in rows}


@pytest.fixture
async def ingress(settings: Settings, tenant: TenantKey) -> AsyncIterator[Api]:
    """The HTTP ingress alone (nothing consumes what it publishes)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, timeout_s=10)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield Api(client, tenant)
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def api(ingress: Api, settings: Settings) -> AsyncIterator[Api]:
    """The ingress, a POS worker and a metering worker."""
    async with running(build_pos(settings)), running(build_metering(settings)):
        yield ingress


async def test_pos_receipts_become_gross_sales_and_transactions_once_with_refunds(
    api: Api, settings: Settings, sessions: Sessions
) -> None:
    await api.command("POST", "/v1/meters", GROSS_SALES)
    await api.command("POST", "/v1/meters", TRANSACTIONS)
    outcome = await api.command(
        "PUT",
        "/v1/integrations/pos/generic/mapping",
        {"default_subject": "shop-42", "subjects_by_location": {"airport": "shop-77"}},
    )
    assert outcome["result"] == {"source": "generic"}
    mapping = await api.client.get("/v1/integrations/pos/generic/mapping", headers=api.headers)
    assert mapping.json()["default_subject"] == "shop-42"
    other = Api(api.client, await make_tenant(sessions, "globex"))  # another tenant: not visible
    assert (
        await other.client.get("/v1/integrations/pos/generic/mapping", headers=other.headers)
    ).status_code == 404

    r = await api.post_receipts(
        [
            receipt("R-1", "berlin", "7.00"),
            receipt("R-2", "berlin", "3.50"),
            receipt("R-3", "airport", "12.00"),
            receipt("R-2", "berlin", "3.50"),  # the same receipt twice in one batch
        ]
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 4, "receipts": ["R-1", "R-2", "R-3", "R-2"]}
    # later: a refund of sent again by a POS that retried
    r = await api.post_receipts(
        [receipt("R-1-refund", "berlin", "7.00", kind="refund"), receipt("R-3", "airport", "12.00")]
    )
    assert r.status_code == 202, r.text

    async def settled() -> bool:
        return await api.by("transactions", "location") == {
            "berlin": Decimal(2),
            "airport": Decimal(1),
        } and await api.by("gross_sales", "location") == {
            "berlin": Decimal(350),  # 700 + 350 - 700 (the refund), in cents
            "airport": Decimal(1200),
        }

    await wait_for(settled, timeout_s=30)
    # everything read and applied: nothing more arrives later
    await wait_committed_to_end(settings, groups.POS_RECEIPTS, topics.INTEGRATIONS_POS)
    await wait_outbox_drained(sessions)
    await wait_committed_to_end(settings, groups.METERING_USAGE, topics.USAGE)
    assert await settled()
    # usage per customer: the airport's sales belong to shop-77
    r = await api.client.get(
        "/v1/meters/gross_sales/usage", params={"group_by": "subject"}, headers=api.headers
    )
    assert {row["subject"]: row["value"] for row in r.json()["data"]} == {
        "shop-42": 350,
        "shop-77": 1200,
    }
    # 4 distinct receipts: 4 gross_sales events and 3 transactions (refunds are not counted)
    usage = [json.loads(rec.value) for rec in await read_topic(settings, topics.USAGE, 7)]
    refund = next(u for u in usage if u["id"] == "R-1-refund/gross_sales")
    assert refund["data"]["amount"] == -700 and refund["data"]["kind"] == "refund"
    assert refund["source"] == "billstream/pos/generic" and refund["subject"] == "shop-42"


async def test_pos_refuses_invalid_receipts_naming_the_field_and_unknown_sources(
    ingress: Api, settings: Settings
) -> None:
    api = ingress
    bad = receipt("R-9", "berlin", "7.005")
    r = await api.post_receipts([receipt("R-8", "berlin", "1.00"), bad])
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"] == [
        {
            "field": "receipts[1].lines[0].total",
            "reason": "7.005 has more decimal places than EUR allows (2)",
        }
    ]
    mismatch = {**receipt("R-9", "berlin", "7.00"), "total": "8.00"}
    r = await api.post_receipts([mismatch])
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "receipts[0].total"
    r = await api.client.post(
        "/v1/integrations/pos/nope/transactions", json={"receipts": []}, headers=api.headers
    )
    assert r.status_code == 404 and "generic" in r.json()["detail"]
    r = await api.client.put(
        "/v1/integrations/pos/generic/mapping", json={"count_refunds": True}, headers=api.headers
    )
    assert r.status_code == 422
    assert (await read_topic(settings, topics.INTEGRATIONS_POS, 0)) == []


async def test_a_receipt_without_a_mapping_is_dead_lettered_for_a_redrive(
    api: Api, settings: Settings
) -> None:
    r = await api.post_receipts([receipt("R-1", "berlin", "7.00")])
    assert r.status_code == 202
    [dead] = await read_topic(settings, topics.dlq(topics.INTEGRATIONS_POS), 1)
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["billstream-dlq-error"] == "no_pos_mapping"
    assert "/v1/integrations/pos/generic/mapping" in headers["billstream-dlq-reason"]
