"""Bounded values at the door (issue 12, findings 1 and 6; docs/adr/0043-bounded-values.md):
through the real HTTP API every out-of-range value is a 422 naming its field, and nothing
is published; read off the topic, the metering worker dead-letters it and applies the rest."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from schemas import topics
from schemas.groups import METERING_USAGE as USAGE_GROUP
from tests.conftest import TenantKey
from tests.integration.http import serve
from tests.integration.support import (
    Sessions,
    headers,
    insert_meters,
    producer,
    read_topic,
    running,
    send_raw,
    topic_size,
    total,
    usage,
    wait_committed_to_end,
)
from workers.metering.app import build
from workers.settings import Settings

D = Decimal
TOKENS = {
    "key": "tokens",
    "event_type": "llm.completion",
    "aggregation": "sum",
    "value_property": "$.tokens",
}


def event(i: int, tokens: Any = 10, **over: Any) -> dict[str, Any]:
    return {
        "id": f"evt-{i}",
        "source": "tests",
        "type": "llm.completion",
        "subject": "customer-42",
        "time": "2026-11-22T10:15:00Z",
        "data": {"tokens": tokens},
        **over,
    }


@pytest.fixture
async def client(settings: Settings, tenant: TenantKey) -> AsyncIterator[httpx.AsyncClient]:
    server, task, base = await serve(settings)
    auth = {"Authorization": f"Bearer {tenant.api_key}"}
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=auth) as http:
        yield http
    server.should_exit = True
    await task


def refused(r: httpx.Response) -> dict[str, str]:
    """A 422 problem document's errors: field -> reason."""
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == "urn:billstream:problem:validation", body
    return {e["field"]: e["reason"] for e in body["errors"]}


async def post_events(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    # raw bytes: a JSON number like 1e400 must reach the server as written
    return await http.post("/v1/events", content=body, headers={"Content-Type": "application/json"})


async def test_out_of_range_metered_values_are_refused_naming_the_field(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    before = await topic_size(settings, topics.USAGE)
    for tokens in ('"1e30"', "1e30", "1e400", "-1e16", '"0.0000000000001"', "1000000000000001"):
        body = b'{"events": [%s, %s]}' % (
            _json(event(1)),
            _json(event(2)).replace(b'"tokens":10', b'"tokens":' + tokens.encode()),
        )
        errors = refused(await post_events(client, body))
        assert set(errors) == {"events[1].data"}, (tokens, errors)
        assert "data.tokens" in errors["events[1].data"], errors
    assert await topic_size(settings, topics.USAGE) == before  # nothing was published


async def test_control_characters_are_refused_naming_the_field(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    before = await topic_size(settings, topics.USAGE)
    for field, value in (("subject", "cust\u0000omer"), ("id", "e\u0001"), ("source", "s\n")):
        r = await client.post("/v1/events", json={"events": [event(1, **{field: value})]})
        errors = refused(r)
        assert set(errors) == {f"events[0].{field}"}, errors
        assert "control character" in errors[f"events[0].{field}"]
    r = await client.post(
        "/v1/events", json={"events": [event(1, data={"model": "a\u0000b", "tokens": 1})]}
    )
    assert "data.model" in refused(r)["events[0].data"]
    assert await topic_size(settings, topics.USAGE) == before

    customer = {"external_id": "c-1", "name": "Ann\u0000", "currency": "EUR"}
    errors = refused(await client.post("/v1/customers", json=customer))
    assert set(errors) == {"name"}, errors


@pytest.mark.parametrize(
    "time",
    [
        "9999-12-31T23:30:00-01:00",  # its UTC form is in year 10000: it overflowed
        "0001-01-01T00:30:00+01:00",  # its UTC form is in year 0
        "2100-01-01T00:00:00Z",  # the window's end, exclusive
        "1969-12-31T23:59:59.999999Z",
        "1970-01-01T00:30:00+01:00",  # 1969 in UTC
    ],
)
async def test_event_times_outside_the_window_are_refused(
    client: httpx.AsyncClient, time: str
) -> None:
    r = await client.post("/v1/events", json={"events": [event(1), event(2, time=time)]})
    assert set(refused(r)) == {"events[1].time"}


async def test_money_and_times_of_commands_are_bounded(client: httpx.AsyncClient) -> None:
    # a 40-digit offline payment (the invoice need not exist: the body is checked first)
    r = await client.post(
        "/v1/invoices/inv_1/offline-payments", json={"amount": 10**40, "method": "cash"}
    )
    assert set(refused(r)) == {"amount"}
    r = await client.post("/v1/payments/pay_1/refunds", json={"amount": 10**15 + 1})
    assert set(refused(r)) == {"amount"}
    for when in ("9999-12-31T23:30:00-01:00", "0001-01-01T00:30:00+01:00"):
        r = await client.post("/v1/billing-runs", json={"as_of": when})
        assert set(refused(r)) == {"as_of"}
        r = await client.post(
            "/v1/subscriptions", json={"customer": "c-1", "plan": "pro", "start": when}
        )
        assert set(refused(r)) == {"start"}
    plan = {
        "key": "pro",
        "name": "Pro",
        "currency": "USD",
        "interval": "month",
        "prices": [
            {"kind": "per_unit", "key": "t", "name": "T", "meter": "tokens", "unit_price": "1"},
            # 10**13 USD is 10**15 + 100 cents... at most 10**15 minor units
            {"kind": "flat", "key": "f", "name": "F", "amount": "10000000000000.01"},
        ],
    }
    errors = refused(await client.post("/v1/plans", json=plan))
    assert set(errors) == {"prices"} and "prices[1].amount" in errors["prices"], errors


async def test_values_at_the_limits_are_accepted(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    before = await topic_size(settings, topics.USAGE)
    body = b'{"events": [%s, %s, %s, %s]}' % (
        _json(event(1, tokens=10**15)),
        _json(event(2, tokens="-1000000000000000")),
        _json(event(3, time="1970-01-01T00:00:00Z")).replace(b'"tokens":10', b'"tokens":1e-12'),
        _json(event(4, tokens="0.000000000001", time="2099-12-31T23:59:59.999999Z")),
    )
    r = await post_events(client, body)
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 4}
    assert await topic_size(settings, topics.USAGE) == before + 4
    r = await client.post(
        "/v1/invoices/inv_1/offline-payments", json={"amount": 10**15, "method": "cash"}
    )
    assert r.status_code == 404, r.text  # valid: it got as far as looking up the invoice


async def test_the_metering_worker_dead_letters_out_of_range_records_and_applies_the_rest(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    """Kafka-native producers skip the door: the same rules hold when decoding."""
    meters = await insert_meters(sessions, "acme", [TOKENS])
    key = b"acme:cust-1"
    at = datetime(2026, 11, 22, 10, tzinfo=UTC)
    valid = [
        usage("acme", f"ok-{i}", type="llm.completion", time=at, data={"tokens": D(i)})
        for i in range(1, 4)
    ]
    good = valid[0].to_json()
    poison = {
        "1e400": good.replace(b'"id":"ok-1"', b'"id":"p-1"').replace(
            b'"tokens":1', b'"tokens":1e400'
        ),
        "1e30 as text": good.replace(b'"id":"ok-1"', b'"id":"p-2"').replace(
            b'"tokens":1', b'"tokens":"1e30"'
        ),
        "time overflows": good.replace(b'"id":"ok-1"', b'"id":"p-3"').replace(
            b'"time":"2026-11-22T10:00:00Z"', b'"time":"9999-12-31T23:30:00-01:00"'
        ),
        "NUL in subject": good.replace(b'"id":"ok-1"', b'"id":"p-4"').replace(
            b'"subject":"cust-1"', b'"subject":"cust\\u0000-1"'
        ),
    }
    assert all(value != good for value in poison.values())
    offsets: dict[str, int] = {}
    async with producer(settings) as p:
        for i, (name, value) in enumerate(poison.items()):
            await send_raw(p, topics.USAGE, valid[i % len(valid)].to_json(), key)
            offsets[name] = (await send_raw(p, topics.USAGE, value, key)).offset
        async with running(build(settings)):
            dead = await read_topic(settings, topics.dlq(topics.USAGE), len(poison))
            await wait_committed_to_end(settings, USAGE_GROUP, topics.USAGE)

    assert await total(sessions, meters["tokens"]) == D(1 + 2 + 3)  # ok-1 (sent twice) once
    by_offset = {int(headers(r)["billstream-dlq-offset"]): headers(r) for r in dead}
    assert sorted(by_offset) == sorted(offsets.values())
    reasons = {name: by_offset[offsets[name]]["billstream-dlq-reason"] for name in poison}
    assert "at most 10**15" in reasons["1e400"], reasons
    assert "at most 10**15" in reasons["1e30 as text"], reasons
    assert "2100-01-01T00:00:00Z" in reasons["time overflows"], reasons
    assert "control character" in reasons["NUL in subject"], reasons


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
