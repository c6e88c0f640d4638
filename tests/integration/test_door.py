"""The door of the ingress: authentication before the body, size and depth limits on every
endpoint, bad parameters answered 4xx naming them, a dependency down answered 503.

Real uvicorn, real broker, real PostgreSQL. Every operation is taken from the service's own
OpenAPI document, so a route added later is held to the same rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import TenantKey, make_tenant
from tests.integration.http import ingress
from workers.settings import Settings

PROBLEM = "application/problem+json"

#: a value matching each path parameter's pattern (the resource need not exist)
SAMPLE_PATH = {
    "command_id": "cmd-1",
    "key": "tokens",
    "external_id": "cust-1",
    "subscription_id": "sub_1",
    "run_id": "run_1",
    "invoice_id": "in_1",
    "customer": "cust-1",
    "payment_id": "pay_1",
    "token": "t" * 24,
    "endpoint_id": "ep_" + "a" * 26,
    "message_id": "msg_" + "a" * 26,
    "source": "generic",
    "alert_id": "al_" + "0" * 32,
    "grant_id": "grant_1",
    "coupon_id": "twenty",
    "code": "LAUNCH",
    "discount_id": "disc_1",
    "credit_note_id": "cn_1",
    "tax_rate_id": "txr_1",
    "receipt_id": "rct_" + "0" * 32,
    "tenant": "acme",
    "feature": "sso",
    "plan": "pro",
    "partner_id": "acme-travel",
    "statement_id": "cst_" + "0" * 32,
}


@dataclass
class Operation:
    method: str
    path: str  # template
    spec: dict[str, Any] = field(repr=False)

    @property
    def authenticated(self) -> bool:
        return bool(self.spec.get("security"))

    @property
    def takes_body(self) -> bool:
        return "requestBody" in self.spec

    def params(self, where: str) -> list[str]:
        return [p["name"] for p in self.spec.get("parameters", []) if p["in"] == where]

    def url(self, **override: str) -> str:
        values = {**SAMPLE_PATH, **override}
        return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], self.path)


def operations(openapi: dict[str, Any]) -> Iterator[Operation]:
    for path, ops in openapi["paths"].items():
        for method, spec in ops.items():
            yield Operation(method.upper(), path, spec)


async def raw_request(base: str, head: str, timeout_s: float = 5) -> tuple[int, bytes]:
    """Send only the request head (a body is announced, never sent); the status and body of
    the answer. A server that waits for the body times out here."""
    url = httpx.URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head.encode())
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            status_line = await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        assert headers.get("content-type") == PROBLEM, headers
        return int(status_line.split()[1]), body
    finally:
        writer.close()


@pytest.fixture
async def door(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    async with ingress(settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        openapi = (await client.get("/openapi.json")).json()
        yield client, openapi


def head(op: Operation, *, key: str | None, length: int) -> str:
    lines = [
        f"{op.method} {op.url()} HTTP/1.1",
        "Host: ingress",
        "Content-Type: application/json",
        f"Content-Length: {length}",
    ]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    return "\r\n".join(lines) + "\r\n\r\n"


HUGE = 150 * 1024 * 1024


async def test_no_key_is_401_and_too_large_is_413_before_the_body_is_read(
    door: tuple[httpx.AsyncClient, dict[str, Any]], tenant: TenantKey
) -> None:
    client, openapi = door
    base = str(client.base_url)
    with_body = [op for op in operations(openapi) if op.takes_body]
    for op in with_body:
        if op.authenticated:
            for key in (None, "bsk_wrong_key"):
                status, body = await raw_request(base, head(op, key=key, length=HUGE))
                assert status == 401, (op, body)
        status, body = await raw_request(base, head(op, key=tenant.api_key, length=HUGE))
        assert status == 413, (op, body)
        assert b"urn:billstream:problem:too_large" in body
    # the ingest endpoints and the Stripe webhook document the body they read themselves
    assert {("POST", "/v1/integrations/pos/{source}/transactions")} <= {
        (op.method, op.path) for op in with_body
    }
    assert len(with_body) > 25


async def test_a_body_past_the_limit_is_refused_while_it_streams(
    door: tuple[httpx.AsyncClient, dict[str, Any]], tenant: TenantKey, settings: Settings
) -> None:
    client, _ = door
    chunk = b" " * 65_536
    chunks = settings.max_request_bytes // len(chunk) + 2

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(chunks):  # no Content-Length: chunked
            yield chunk

    r = await client.post(
        "/v1/meters",
        content=stream(),
        headers={"Authorization": f"Bearer {tenant.api_key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == PROBLEM


async def test_json_nested_too_deeply_is_400_on_every_endpoint(
    door: tuple[httpx.AsyncClient, dict[str, Any]], tenant: TenantKey
) -> None:
    client, openapi = door
    deep = "[" * 1000 + "]" * 1000
    auth = {"Authorization": f"Bearer {tenant.api_key}", "Content-Type": "application/json"}
    for op in operations(openapi):
        if not op.takes_body:
            continue
        r = await client.request(op.method, op.url(), content=deep, headers=auth)
        assert r.status_code == 400, (op, r.status_code, r.text)
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["type"] == "urn:billstream:problem:json_too_deep"
    # deep nesting inside a string is not nesting
    r = await client.post(
        "/v1/events",
        json={"events": [{"id": "e", "data": {"note": "[" * 5000}}]},
        headers=auth,
    )
    assert r.status_code == 422, r.text  # the event is incomplete; it was parsed


async def test_a_control_character_in_any_parameter_is_422_naming_it(
    door: tuple[httpx.AsyncClient, dict[str, Any]], tenant: TenantKey
) -> None:
    client, openapi = door
    auth = {"Authorization": f"Bearer {tenant.api_key}"}
    checked = 0
    for op in operations(openapi):
        for name in op.params("path"):
            r = await client.request(
                op.method,
                op.url(**{name: "a%00b"}),
                headers=auth,
                json={} if op.takes_body else None,
            )
            assert r.status_code == 422, (op, name, r.status_code, r.text)
            assert r.headers["content-type"] == PROBLEM
            assert name in {e["field"] for e in r.json()["errors"]}, (op, r.text)
            checked += 1
        for name in op.params("query"):
            r = await client.request(op.method, op.url(), params={name: "a\x00b"}, headers=auth)
            assert r.status_code == 422, (op, name, r.status_code, r.text)
            assert name in {e["field"] for e in r.json()["errors"]}, (op, r.text)
            checked += 1
    assert checked > 60


@pytest.mark.parametrize(
    ("method", "path", "param"),
    [
        ("POST", "/v1/subscriptions/a.b/cancel", "subscription_id"),
        ("POST", "/v1/subscriptions/a.b/change-plan", "subscription_id"),
        ("POST", "/v1/invoices/a.b/void", "invoice_id"),
        ("POST", "/v1/invoices/a.b/mark-uncollectible", "invoice_id"),
        ("POST", "/v1/invoices/a.b/offline-payments", "invoice_id"),
        ("POST", "/v1/integrations/pos/Not-A-Source/transactions", "source"),
    ],
)
async def test_an_id_outside_its_pattern_is_422_naming_it(
    door: tuple[httpx.AsyncClient, dict[str, Any]],
    tenant: TenantKey,
    method: str,
    path: str,
    param: str,
) -> None:
    client, _ = door
    bodies = {
        "cancel": {"mode": "immediately"},
        "change-plan": {"plan": "pro"},
        "offline-payments": {"amount": 1, "method": "cash"},
        "transactions": {"receipts": []},
    }
    body = bodies.get(path.rsplit("/", 1)[-1], {})
    r = await client.request(
        method, path, json=body, headers={"Authorization": f"Bearer {tenant.api_key}"}
    )
    assert r.status_code in (404, 422), r.text
    assert r.headers["content-type"] == PROBLEM
    if r.status_code == 422:
        assert param in {e["field"] for e in r.json()["errors"]}, r.text


async def test_payments_of_an_unknown_invoice_are_404(
    door: tuple[httpx.AsyncClient, dict[str, Any]], tenant: TenantKey
) -> None:
    client, _ = door
    r = await client.get(
        "/v1/invoices/in_nope/payments", headers={"Authorization": f"Bearer {tenant.api_key}"}
    )
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == PROBLEM


async def test_a_request_id_that_cannot_be_a_correlation_id_is_replaced_not_a_500(
    door: tuple[httpx.AsyncClient, dict[str, Any]], tenant: TenantKey
) -> None:
    """An ``X-Request-Id`` over 256 characters used to fail building the command (500)."""
    client, _ = door
    auth = {"Authorization": f"Bearer {tenant.api_key}"}
    meter = {"key": "calls", "event_type": "api.call", "aggregation": "count"}
    long_id = "r" * 300
    r = await client.post("/v1/meters", json=meter, headers={**auth, "X-Request-Id": long_id})
    assert r.status_code == 202, r.text
    assert r.headers["x-request-id"] not in ("", long_id)
    r = await client.post("/v1/meters", json=meter, headers={**auth, "X-Request-Id": "req-42"})
    assert (r.status_code, r.headers["x-request-id"]) == (202, "req-42")


async def test_a_bool_is_not_an_integer(
    door: tuple[httpx.AsyncClient, dict[str, Any]], tenant: TenantKey
) -> None:
    client, _ = door
    r = await client.post(
        "/v1/webhooks/endpoints/ep_" + "a" * 26 + "/secret/rotate",
        json={"overlap_s": False},
        headers={"Authorization": f"Bearer {tenant.api_key}"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "overlap_s"


# --- a dependency down -----------------------------------------------------------------


class Proxy:
    """A TCP proxy in front of PostgreSQL that can be cut: PostgreSQL 'goes down'."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        socket_dir = url.query.get("host")
        self.unix = f"{socket_dir}/.s.PGSQL.{url.port or 5432}" if socket_dir else None
        self.target = (url.host or "127.0.0.1", url.port or 5432)
        self.url = url
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        query = {k: v for k, v in self.url.query.items() if k != "host"}
        return self.url.set(host="127.0.0.1", port=port, query=query).render_as_string(
            hide_password=False
        )

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.unix:
            server_r, server_w = await asyncio.open_unix_connection(self.unix)
        else:
            server_r, server_w = await asyncio.open_connection(*self.target)
        self.writers |= {client_w, server_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65_536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()


async def test_postgresql_down_is_503_with_retry_after_on_every_endpoint(
    settings: Settings, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    proxy = Proxy(settings.database_url)
    via_proxy = settings.model_copy(
        update={"database_url": await proxy.start(), "api_key_cache_s": 60.0}
    )
    other = await make_tenant(sessions, "globex")  # its key is never cached
    async with ingress(via_proxy) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        openapi = (await client.get("/openapi.json")).json()
        auth = {"Authorization": f"Bearer {tenant.api_key}"}
        assert (await client.get("/v1/meters", headers=auth)).status_code == 200  # key cached
        await proxy.cut()
        for key in (tenant, other):
            for op in operations(openapi):
                headers = {"Authorization": f"Bearer {key.api_key}"}
                r = await client.request(
                    op.method, op.url(), headers=headers, json={} if op.takes_body else None
                )
                if r.status_code == 422:  # an empty body is refused first: fine, no 5xx
                    continue
                if (op.method, op.path, key) == ("GET", "/v1/integrations/pos", tenant):
                    assert r.status_code == 200  # a cached key, a static list: no database
                    continue
                assert r.status_code == 503, (key.tenant_id, op, r.status_code, r.text)
                assert r.headers["content-type"] == PROBLEM
                assert r.headers["retry-after"].isdigit()
        meter = {"key": "m", "event_type": "e", "aggregation": "count"}
        r = await client.post("/v1/meters", json=meter, headers=auth)
        assert r.status_code == 503, r.text


async def test_broker_down_leaves_nothing_half_written(
    settings: Settings, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    nowhere = settings.model_copy(
        update={"kafka_bootstrap": "127.0.0.1:9", "kafka_request_timeout_ms": 1_000}
    )
    async with ingress(nowhere) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        meter = {"key": "m", "event_type": "e", "aggregation": "count"}
        headers = {"Authorization": f"Bearer {tenant.api_key}", "Idempotency-Key": "k1"}
        r = await client.post("/v1/meters", json=meter, headers=headers)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"].isdigit()
    async with sessions() as db:
        for table in ("idempotency_keys", "commands"):
            count = (await db.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            assert count == 0, table
