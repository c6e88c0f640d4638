"""The HTTP ingress end to end: real uvicorn, real broker, real PostgreSQL, real worker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas import topics
from tests.conftest import TenantKey, make_tenant
from tests.integration.http import serve
from workers.devstack import EmbeddedKafka, wait_for
from workers.metering.app import build as build_metering
from workers.settings import Settings

TOKENS_METER = {
    "key": "tokens",
    "event_type": "llm.completion",
    "aggregation": "sum",
    "value_property": "$.tokens",
    "group_by": {"model": "$.model"},
}


def event(
    i: int,
    subject: str = "customer-42",
    tokens: Any = 10,
    model: str = "m1",
    time: str = "2026-11-22T10:15:00Z",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": f"evt-{i}",
        "source": "tests",
        "type": "llm.completion",
        "subject": subject,
        "time": time,
        "data": {"tokens": tokens, "model": model},
        **extra,
    }


@dataclass
class Api:
    base: str
    client: httpx.AsyncClient
    settings: Settings

    def auth(self, key: TenantKey) -> dict[str, str]:
        return {"Authorization": f"Bearer {key.api_key}"}

    async def command_outcome(self, key: TenantKey, command_id: str) -> dict[str, Any]:
        async def done() -> dict[str, Any] | None:
            r = await self.client.get(f"/v1/commands/{command_id}", headers=self.auth(key))
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body if body["status"] != "pending" else None

        result: dict[str, Any] = await wait_for(done, timeout_s=20)
        return result

    async def create_meter(self, key: TenantKey, meter: dict[str, Any] = TOKENS_METER) -> None:
        r = await self.client.post("/v1/meters", json=meter, headers=self.auth(key))
        assert r.status_code == 202, r.text
        outcome = await self.command_outcome(key, r.json()["command_id"])
        assert outcome["status"] == "succeeded", outcome

    async def usage(self, key: TenantKey, meter: str = "tokens", **params: Any) -> dict[str, Any]:
        r = await self.client.get(
            f"/v1/meters/{meter}/usage", params=params, headers=self.auth(key)
        )
        assert r.status_code == 200, r.text
        # values are exact JSON numbers: parse them as Decimals
        body: dict[str, Any] = json.loads(r.text, parse_float=Decimal)
        return body

    async def wait_total(self, key: TenantKey, expected: Decimal, **params: Any) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            body = await self.usage(key, **params)
            values = [Decimal(row["value"]) for row in body["data"]]
            return body if sum(values, Decimal(0)) == expected else None

        result: dict[str, Any] = await wait_for(reached, timeout_s=20)
        return result


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    worker = build_metering(settings)
    await worker.start()
    server, task, base = await serve(settings)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield Api(base, client, settings)
    server.should_exit = True
    await task
    await worker.stop()


async def topic_size(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not parts:
            await consumer.topics()
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        ends = await consumer.end_offsets(parts)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def test_requests_without_a_valid_api_key_are_refused(api: Api) -> None:
    r = await api.client.post("/v1/events", json={"events": [event(1)]})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = await api.client.get("/v1/meters", headers={"Authorization": "Bearer bsk_nope_nope"})
    assert r.status_code == 401


async def test_meter_then_events_then_exact_usage(api: Api, tenant: TenantKey) -> None:
    await api.create_meter(tenant)
    r = await api.client.get("/v1/meters/tokens", headers=api.auth(tenant))
    assert r.status_code == 200 and r.json()["aggregation"] == "sum"

    batch = [
        event(1, tokens=120),
        event(2, tokens="0.1", model="m2"),
        event(3, tokens=0.2, model="m2"),
        event(4, tokens=5, time="2026-11-22T11:59:59Z"),
    ]
    r = await api.client.post("/v1/events", json={"events": batch}, headers=api.auth(tenant))
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 4}

    body = await api.wait_total(tenant, Decimal("125.3"), subject="customer-42")
    assert body["data"][0]["subject"] == "customer-42"

    by_model = await api.usage(tenant, subject="customer-42", group_by="model")
    assert {row["group_by"]["model"]: row["value"] for row in by_model["data"]} == {
        "m1": Decimal("125"),
        "m2": Decimal("0.3"),
    }
    hourly = await api.usage(
        tenant, window_size="hour", **{"from": "2026-11-22T10:00:00Z", "to": "2026-11-22T12:00:00Z"}
    )
    assert [(row["window_start"], row["value"]) for row in hourly["data"]] == [
        ("2026-11-22T10:00:00+00:00", Decimal("120.3")),
        ("2026-11-22T11:00:00+00:00", Decimal("5")),
    ]
    only_11 = await api.usage(
        tenant, **{"from": "2026-11-22T11:00:00Z", "to": "2026-11-22T12:00:00Z"}
    )
    assert [row["value"] for row in only_11["data"]] == [Decimal("5")]


async def test_resending_a_batch_counts_once_and_both_formats_work(
    api: Api, tenant: TenantKey
) -> None:
    await api.create_meter(tenant)
    batch = [event(i, tokens=1) for i in range(50)]
    for _ in range(3):
        r = await api.client.post("/v1/events", json={"events": batch}, headers=api.auth(tenant))
        assert r.status_code == 202
    r = await api.client.post(
        "/v1/events",
        content=json.dumps([*batch, event(99, tokens=50)]),
        headers={**api.auth(tenant), "Content-Type": "application/cloudevents-batch+json"},
    )
    assert r.status_code == 202 and r.json() == {"accepted": 51}
    await api.wait_total(tenant, Decimal(100))
    # once the last one is counted, nothing else arrives late
    body = await api.usage(tenant)
    assert [row["value"] for row in body["data"]] == [Decimal(100)]


async def test_an_invalid_event_refuses_the_whole_batch_and_names_it(
    api: Api, tenant: TenantKey
) -> None:
    before = await topic_size(api.settings.kafka_bootstrap, topics.USAGE)
    bad_time = event(2)
    del bad_time["time"]
    naive = event(3, time="2026-11-22T10:00:00")
    batch = [event(1), bad_time, naive, event(4, unexpected="x")]
    r = await api.client.post("/v1/events", json={"events": batch}, headers=api.auth(tenant))
    assert r.status_code == 422
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    by_index = {(e["index"], e["field"]) for e in problem["errors"]}
    assert (1, "events[1].time") in by_index
    assert (2, "events[2].time") in by_index
    assert (3, "events[3].unexpected") in by_index
    assert all(e["reason"] for e in problem["errors"])
    assert await topic_size(api.settings.kafka_bootstrap, topics.USAGE) == before


async def test_limits_on_size_and_count(api: Api, tenant: TenantKey) -> None:
    too_many = [event(i) for i in range(api.settings.max_batch_events + 1)]
    r = await api.client.post("/v1/events", json={"events": too_many}, headers=api.auth(tenant))
    assert r.status_code == 413 and "at most 1000" in r.json()["detail"]
    huge = [event(1, blob="x" * (api.settings.max_request_bytes + 1))]
    r = await api.client.post("/v1/events", json={"events": huge}, headers=api.auth(tenant))
    assert r.status_code == 413
    r = await api.client.post("/v1/events", content=b"{not json", headers=api.auth(tenant))
    assert r.status_code == 400 and r.json()["type"] == "urn:billstream:problem:malformed_json"
    r = await api.client.post("/v1/events", json={"events": []}, headers=api.auth(tenant))
    assert r.status_code == 422


async def test_meter_validation_and_conflicts(api: Api, tenant: TenantKey) -> None:
    r = await api.client.post(
        "/v1/meters", json={**TOKENS_METER, "value_property": None}, headers=api.auth(tenant)
    )
    assert r.status_code == 422
    assert r.json()["errors"] == [
        {"field": "value_property", "reason": "Value error, required for aggregation 'sum'"}
    ]
    r = await api.client.post(
        "/v1/meters", json={**TOKENS_METER, "group_by": {"m": "model"}}, headers=api.auth(tenant)
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "group_by"

    await api.create_meter(tenant)
    await api.create_meter(tenant)  # identical: succeeds again
    r = await api.client.post(
        "/v1/meters", json={**TOKENS_METER, "aggregation": "max"}, headers=api.auth(tenant)
    )
    outcome = await api.command_outcome(tenant, r.json()["command_id"])
    assert outcome["status"] == "failed"
    assert outcome["error"]["code"] == "meter_conflict"
    r = await api.client.get("/v1/meters/tokens", headers=api.auth(tenant))
    assert r.json()["aggregation"] == "sum"


async def test_idempotency_key_replays_the_first_response(api: Api, tenant: TenantKey) -> None:
    headers = {**api.auth(tenant), "Idempotency-Key": "create-tokens-1"}
    first = await api.client.post("/v1/meters", json=TOKENS_METER, headers=headers)
    second = await api.client.post("/v1/meters", json=TOKENS_METER, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["command_id"] == second.json()["command_id"]
    assert second.headers.get("idempotent-replayed") == "true"
    other = await api.client.post(
        "/v1/meters", json={**TOKENS_METER, "key": "other"}, headers=headers
    )
    assert other.status_code == 422 and "different request" in other.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "change", "generated"),
    [
        (
            "/v1/billing-runs",
            {"as_of": "2031-01-01T00:00:00Z"},
            {"as_of": "2031-01-02T00:00:00Z"},
            "billing_run_id",
        ),
        (
            "/v1/coupons",
            {"name": "Ten", "percent_off": "10", "duration": "once"},
            {"name": "Tan"},
            "coupon_id",
        ),
    ],
)
async def test_a_retry_of_a_request_whose_id_the_ingress_generates_gets_the_first_answer(
    api: Api,
    tenant: TenantKey,
    path: str,
    body: dict[str, Any],
    change: dict[str, Any],
    generated: str,
) -> None:
    """The key stands for the request as sent, not for the command the ingress built from
    it (which carries a fresh id every time)."""
    headers = {**api.auth(tenant), "Idempotency-Key": f"retry-{generated}"}
    first = await api.client.post(path, json=body, headers=headers)
    second = await api.client.post(path, json=body, headers=headers)
    assert first.status_code == second.status_code == 202, second.text
    assert second.headers.get("idempotent-replayed") == "true"
    assert first.json()[generated] == second.json()[generated]
    assert first.json()["command_id"] == second.json()["command_id"]
    other = await api.client.post(path, json=body | change, headers=headers)
    assert other.status_code == 422 and "different request" in other.json()["detail"]


async def test_usage_query_validation(api: Api, tenant: TenantKey) -> None:
    await api.create_meter(tenant)
    r = await api.client.get(
        "/v1/meters/tokens/usage", params={"from": "2026-11-22T10:30:00Z"}, headers=api.auth(tenant)
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "from"
    # a whole hour in +05:30 is half past in UTC: refused too (buckets are UTC hours)
    r = await api.client.get(
        "/v1/meters/tokens/usage",
        params={"to": "2026-11-22T10:00:00+05:30"},
        headers=api.auth(tenant),
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "to"
    r = await api.client.get(
        "/v1/meters/tokens/usage", params={"group_by": "region"}, headers=api.auth(tenant)
    )
    assert r.status_code == 422 and "region" in r.json()["detail"]
    r = await api.client.get("/v1/meters/nope/usage", headers=api.auth(tenant))
    assert r.status_code == 404


async def test_usage_bounds_outside_the_calendar_are_422_not_500(
    api: Api, tenant: TenantKey
) -> None:
    await api.create_meter(tenant)
    for name, value in [
        ("from", "9999-12-31T23:00:00-05:00"),  # its UTC form is past year 9999
        ("to", "0001-01-01T00:00:00+01:00"),
    ]:
        r = await api.client.get(
            "/v1/meters/tokens/usage", params={name: value}, headers=api.auth(tenant)
        )
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in r.json()["errors"]] == [name]


async def test_tenants_cannot_see_each_other(
    api: Api, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    other = await make_tenant(sessions, "globex")
    r = await api.client.post("/v1/meters", json=TOKENS_METER, headers=api.auth(tenant))
    command_id = r.json()["command_id"]
    await api.command_outcome(tenant, command_id)
    assert (
        await api.client.get(f"/v1/commands/{command_id}", headers=api.auth(other))
    ).status_code == 404
    assert (await api.client.get("/v1/meters/tokens", headers=api.auth(other))).status_code == 404
    assert (await api.client.get("/v1/meters", headers=api.auth(other))).json() == []


async def test_kafka_producers_get_the_same_result_as_http(api: Api, tenant: TenantKey) -> None:
    await api.create_meter(tenant)
    batch = [event(i, subject="via-http", tokens=i) for i in range(1, 21)]
    r = await api.client.post("/v1/events", json={"events": batch}, headers=api.auth(tenant))
    assert r.status_code == 202
    producer = AIOKafkaProducer(bootstrap_servers=api.settings.kafka_bootstrap)
    await producer.start()
    try:
        for e in batch:
            # same ids but another source: different events ((source, id) is the identity)
            direct = {
                **e,
                "source": "kafka-producer",
                "subject": "via-kafka",
                "specversion": "1.0",
                "tenantid": tenant.tenant_id,
            }
            await producer.send(
                topics.USAGE,
                json.dumps(direct).encode(),
                key=f"{tenant.tenant_id}:via-kafka".encode(),
            )
        await producer.flush()
    finally:
        await producer.stop()
    await api.wait_total(tenant, Decimal(420), group_by="subject")
    body = await api.usage(tenant, group_by=["subject", "model"], window_size="hour")
    rows = {
        row["subject"]: (row["window_start"], row["group_by"], row["value"]) for row in body["data"]
    }
    assert rows["via-http"] == rows["via-kafka"]


async def test_broker_down_gives_503_with_retry_after(
    database_url: str, tenant: TenantKey, settings: Settings
) -> None:
    broker = EmbeddedKafka().start()
    down = settings.model_copy(
        update={"kafka_bootstrap": broker.bootstrap, "kafka_request_timeout_ms": 2_000}
    )
    server, task, base = await serve(down)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            broker.stop()
            r = await client.post(
                "/v1/events",
                json={"events": [event(1)]},
                headers={"Authorization": f"Bearer {tenant.api_key}"},
            )
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"].isdigit()
            assert (await client.get("/readyz")).status_code == 503
    finally:
        server.should_exit = True
        await task


async def test_idempotency_keys_expire_after_their_retention(
    api: Api, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    from datetime import timedelta

    from sqlalchemy import text

    from storage.commands import IdempotencyRepository

    headers = {**api.auth(tenant), "Idempotency-Key": "k-1"}
    assert (
        await api.client.post("/v1/meters", json=TOKENS_METER, headers=headers)
    ).status_code == 202
    async with sessions() as session, session.begin():
        await session.execute(
            text("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        )
        assert await IdempotencyRepository(session).purge(timedelta(hours=24)) == 1
    reused = await api.client.post(
        "/v1/meters", json={**TOKENS_METER, "key": "other"}, headers=headers
    )
    assert reused.status_code == 202 and "idempotent-replayed" not in reused.headers


async def test_an_event_too_large_for_the_broker_is_413_not_a_retryable_503(
    settings: Settings, tenant: TenantKey
) -> None:
    roomy = settings.model_copy(update={"max_request_bytes": 3_000_000})
    big = event(1)
    big["data"]["blob"] = "x" * 1_500_000
    server, task, base = await serve(roomy)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await client.post(
                "/v1/events",
                json={"events": [big]},
                headers={"Authorization": f"Bearer {tenant.api_key}"},
            )
        assert r.status_code == 413, r.text
        assert r.json()["type"] == "urn:billstream:problem:event_too_large"
    finally:
        server.should_exit = True
        await task
