"""The receipts HTTP API: real ingress (uvicorn), the receipts worker, real broker and
PostgreSQL. Documents are put on the events topics as invoicing and payments publish them;
the worker issues the receipts; the API lists, shows and exports them, and publishes the
keys an export verifies with (without an API key)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from schemas.envelope import CloudEvent
from schemas.receipts import receipt_id
from tests.conftest import TenantKey, make_tenant
from tests.integration.http import Client
from tests.integration.receipts_support import (
    invoice_finalized,
    key_of,
    payment_succeeded,
    topic_of,
    with_secrets,
)
from tests.integration.support import Sessions, producer
from tests.integration.test_invoicing import Stack, stack
from workers.devstack import wait_for
from workers.receipts import parse_keys, verify_export
from workers.receipts.app import build
from workers.settings import Settings

PROBLEM = "application/problem+json"


@pytest.fixture
async def st(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = with_secrets(settings)
    async with stack(s, tenant, build(s)) as st_:
        yield st_


async def send(settings: Settings, events: list[CloudEvent]) -> None:
    async with producer(settings) as p:
        for e in events:
            await p.send(topic_of(e), e.to_json(), key=key_of(e))
        await p.flush()


async def chain(api: Client, customer: str, count: int) -> list[dict[str, Any]]:
    """The customer's receipts once there are ``count`` (the worker issues them)."""

    async def issued() -> list[dict[str, Any]] | None:
        page = await api.get("/v1/receipts", customer=customer, limit=1000)
        data: list[dict[str, Any]] = page["data"]
        return data if len(data) >= count else None

    found: list[dict[str, Any]] = await wait_for(issued, timeout_s=30)
    assert len(found) == count
    return found


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    return body


def fields(r: httpx.Response) -> set[str]:
    return {e["field"] for e in problem(r, 422)["errors"]}


async def export(api: Client, customer: str) -> tuple[httpx.Response, list[str]]:
    r = await api.http.get("/v1/receipts/export", params={"customer": customer}, headers=api.auth)
    assert r.status_code == 200, r.text
    return r, r.text.splitlines(keepends=True)


async def public_keys(http: httpx.AsyncClient, tenant: str) -> httpx.Response:
    r = await http.get(f"/.well-known/billstream/{tenant}/keys.json")  # no API key
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "public, max-age=300"
    return r


async def test_a_chain_is_listed_in_pages_and_each_receipt_is_only_its_tenants(
    st: Stack, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    events: list[CloudEvent] = [
        invoice_finalized(t, "alice", f"in{i}", 100 * i) for i in range(1, 5)
    ]
    events += [
        payment_succeeded(t, "alice", "pay1", "in1", 100),
        invoice_finalized(t, "bob", "in9", 900),
    ]
    await send(st.settings, events)
    everything = await chain(st.api, "alice", 5)
    assert [r["seq"] for r in everything] == [1, 2, 3, 4, 5]
    invoices = [r["receipt_id"] for r in everything if r["kind"] == "invoice"]
    assert invoices == [receipt_id(t, "invoice", f"in{i}") for i in range(1, 5)]
    assert [r["prev_hash"] for r in everything[1:]] == [r["hash"] for r in everything[:-1]]

    pages: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        page = await st.api.get("/v1/receipts", customer="alice", after_seq=after, limit=2)
        pages.append(page)
        after = page["next_after_seq"]
    assert [[r["seq"] for r in p["data"]] for p in pages] == [[1, 2], [3, 4], [5]]
    assert [(p["has_more"], p["next_after_seq"]) for p in pages] == [
        (True, 2), (True, 4), (False, None)
    ]  # fmt: skip
    assert [r for p in pages for r in p["data"]] == everything
    exact = await st.api.get("/v1/receipts", customer="alice", limit=5)
    assert (exact["has_more"], exact["next_after_seq"]) == (False, None)

    # a customer with no receipts has an empty chain, not a 404
    assert await st.api.get("/v1/receipts", customer="nobody") == {
        "data": [], "has_more": False, "next_after_seq": None
    }  # fmt: skip
    (bob,) = (await st.api.get("/v1/receipts", customer="bob"))["data"]
    assert (bob["document_id"], bob["seq"]) == ("in9", 1)

    # the invoicing and payments topics interleave freely: the payment is somewhere
    (payment,) = [r for r in everything if r["kind"] == "payment"]
    assert payment["document_id"] == "pay1"
    assert await st.api.get(f"/v1/receipts/{payment['receipt_id']}") == payment

    # another tenant sees none of it
    other = Client(st.http, await make_tenant(sessions, "globex"))
    r = await other.http.get(f"/v1/receipts/{payment['receipt_id']}", headers=other.auth)
    assert payment["receipt_id"] in problem(r, 404)["detail"]
    assert (await other.get("/v1/receipts", customer="alice"))["data"] == []
    r = await other.http.get(
        "/v1/receipts/export", params={"customer": "alice"}, headers=other.auth
    )
    assert (r.status_code, r.text) == (200, "")
    # and nobody without a key sees anything
    r = await st.http.get(f"/v1/receipts/{payment['receipt_id']}")
    problem(r, 401)


async def test_an_export_verifies_with_the_public_keys_before_and_after_a_rotation(
    st: Stack, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    customer = "acme:eu@1"  # characters a file name should not hold
    await send(st.settings, [invoice_finalized(t, customer, f"in{i}", 10 * i) for i in (1, 2, 3)])
    before = await chain(st.api, customer, 3)

    r, lines = await export(st.api, customer)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["content-disposition"] == 'attachment; filename="receipts-acme_eu_1.jsonl"'
    assert [json.loads(line) for line in lines] == before
    published = (await public_keys(st.http, t)).json()
    assert published == await st.api.get("/v1/receipts/keys")
    (first,) = published["keys"]
    assert first["not_after"] is None and {r["kid"] for r in before} == {first["kid"]}
    report = verify_export(lines, parse_keys(published))
    assert report.ok, report.failure
    assert report.receipts == 3
    # a line changed no longer verifies
    tampered = [lines[0], lines[1].replace('"seq":2', '"seq":3', 1), lines[2]]
    assert not verify_export(tampered, parse_keys(published)).ok

    outcome = await st.api.command("POST", "/v1/receipts/keys/rotate", {"reason": "yearly"})
    assert outcome["status"] == "succeeded", outcome
    rotated = outcome["result"]
    assert rotated["retired_kid"] == first["kid"] and rotated["kid"] != first["kid"]

    after = (await public_keys(st.http, t)).json()
    old, new = after["keys"]
    assert old["kid"] == first["kid"] and old["not_after"] is not None
    assert new["kid"] == rotated["kid"] and new["not_after"] is None
    assert old["not_after"] == new["not_before"]

    await send(st.settings, [invoice_finalized(t, customer, f"in{i}", 10 * i) for i in (4, 5)])
    receipts = await chain(st.api, customer, 5)
    assert receipts[:3] == before
    assert [r["kid"] for r in receipts[3:]] == [new["kid"]] * 2
    _, lines = await export(st.api, customer)
    report = verify_export(lines, parse_keys(after))
    assert report.ok, report.failure
    assert report.receipts == 5
    # the keys published before the rotation do not know the new key
    stale = verify_export(lines, parse_keys(published))
    assert stale.failure is not None and stale.failure.reason == "unknown_key"

    # a rotation with no body is as good
    outcome = await st.api.command("POST", "/v1/receipts/keys/rotate", None)
    assert outcome["status"] == "succeeded", outcome
    assert outcome["result"]["retired_kid"] == new["kid"]
    assert len((await public_keys(st.http, t)).json()["keys"]) == 3


async def test_the_public_keys_of_a_tenant_with_none_yet_and_of_no_tenant(
    st: Stack, sessions: Sessions
) -> None:
    await make_tenant(sessions, "initech")
    assert (await public_keys(st.http, "initech")).json() == {"keys": []}
    r = await st.http.get("/.well-known/billstream/nosuchtenant/keys.json")
    assert "nosuchtenant" in problem(r, 404)["detail"]
    r = await st.http.get("/.well-known/billstream/Not_A_Tenant/keys.json")
    assert fields(r) == {"tenant"}
    # the same keys through the API need the key
    problem(await st.http.get("/v1/receipts/keys"), 401)
    problem(await st.http.post("/v1/receipts/keys/rotate"), 401)


async def test_bad_input_is_422_naming_the_field(st: Stack) -> None:
    http, auth = st.http, st.api.auth

    async def get(path: str, **params: Any) -> httpx.Response:
        return await http.get(path, params=params, headers=auth)

    assert fields(await get("/v1/receipts", customer="alice", limit=0)) == {"limit"}
    assert fields(await get("/v1/receipts", customer="alice", limit=1001)) == {"limit"}
    assert fields(await get("/v1/receipts", customer="alice", after_seq=-1)) == {"after_seq"}
    assert fields(await get("/v1/receipts")) == {"customer"}
    assert fields(await get("/v1/receipts", customer="a b")) == {"customer"}
    assert fields(await get("/v1/receipts/export")) == {"customer"}
    assert fields(await get("/v1/receipts/rct_nothex")) == {"receipt_id"}
    assert fields(await get("/v1/receipts/in_1")) == {"receipt_id"}
    # a receipt id of the right shape that no receipt has
    problem(await get("/v1/receipts/rct_" + "0" * 32), 404)

    async def rotate(body: Any) -> httpx.Response:
        return await http.post("/v1/receipts/keys/rotate", json=body, headers=auth)

    assert fields(await rotate({"reason": "x" * 501})) == {"reason"}
    assert fields(await rotate({"reason": "two\nlines"})) == {"reason"}
    assert fields(await rotate({"why": "x"})) == {"why"}
