"""The entitlements HTTP API: real ingress (uvicorn), the invoicing worker (customers, plans),
real broker and PostgreSQL. What the door refuses (404 for an unknown plan, customer or
feature; 422 naming the field that does not fit the feature's kind) and publishes (202 and
the command on the entitlements topic); the check; tokens verified with PyJWT against the
public keys at /.well-known/jwks.json (fetched without an API key); one tenant never sees
another's customers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import text

from schemas import topics
from storage.entitlements import FeatureRow, OverrideRow
from tests.conftest import TenantKey, make_tenant
from tests.integration.http import Client, ingress
from tests.integration.receipts_support import with_secrets
from tests.integration.support import Sessions, read_topic, topic_size
from tests.integration.test_invoicing import Stack, stack
from workers import entitlements
from workers.devstack import free_port, wait_for
from workers.entitlements.app import build as build_entitlements
from workers.ingress import fastpath
from workers.ingress.app import create_app
from workers.ingress.fastpath import CheckFastPath
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.runtime import Tx
from workers.settings import Settings

PROBLEM = "application/problem+json"

PRO = {
    "key": "pro",
    "name": "Pro",
    "currency": "USD",
    "interval": "month",
    "prices": [{"kind": "flat", "key": "base", "name": "Pro plan", "amount": "49.00"}],
}
ALICE = {"external_id": "alice", "name": "Alice Ltd", "currency": "USD"}
#: a boolean, a config and a metered feature
FEATURES = [
    {"key": "sso", "name": "Single sign-on", "kind": "boolean"},
    {"key": "tier", "name": "Rate-limit tier", "kind": "config"},
    {"key": "api", "name": "API calls", "kind": "metered", "meter": "calls"},
]


@pytest.fixture
async def st(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = with_secrets(settings)
    async with stack(s, tenant, build_invoicing(s)) as st_:
        await st_.api.ok("POST", "/v1/customers", ALICE)
        await st_.api.ok("POST", "/v1/plans", PRO)
        yield st_


async def add_features(sessions: Sessions, tenant: str, specs: list[dict[str, Any]]) -> None:
    """The features as the entitlements worker stores them (these tests run without it)."""
    async with sessions() as db, db.begin():
        db.add_all(FeatureRow(tenant_id=tenant, **spec) for spec in specs)


async def rotate(sessions: Sessions, settings: Settings, at: datetime) -> str:
    """A new current signing key from ``at`` (as the entitlements worker makes them)."""
    async with sessions() as db, db.begin():
        kid = await entitlements.rotate(Tx(db, "tests"), settings, at)
    assert kid is not None
    return kid


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    return body


def fields(r: httpx.Response) -> list[str]:
    return [e["field"] for e in problem(r, 422)["errors"]]


# --- the check --------------------------------------------------------------------------


async def test_a_check_answers_every_feature_and_404_names_an_unknown_customer_or_feature(
    st: Stack, sessions: Sessions, tenant: TenantKey
) -> None:
    await add_features(sessions, tenant.tenant_id, FEATURES)
    answer = await st.api.get("/v1/customers/alice/entitlements")
    assert (answer["customer"], answer["status"], answer["products"]) == ("alice", "active", [])
    assert answer["grace_until"] is None
    # by key; none subscribed: no access, nothing gives it
    assert [
        (e["feature"], e["kind"], e["has_access"], e["reason"], e["source"])
        for e in answer["entitlements"]
    ] == [
        ("api", "metered", False, "not_subscribed", None),
        ("sso", "boolean", False, "not_subscribed", None),
        ("tier", "config", False, "not_subscribed", None),
    ]
    one = await st.api.get("/v1/customers/alice/entitlements/sso")
    assert one == next(e for e in answer["entitlements"] if e["feature"] == "sso")
    assert one["name"] == "Single sign-on"

    r = await st.http.get("/v1/customers/bob/entitlements", headers=st.api.auth)
    assert "'bob'" in problem(r, 404)["detail"]
    r = await st.http.get("/v1/customers/bob/entitlements/sso", headers=st.api.auth)
    assert "customer 'bob'" in problem(r, 404)["detail"]
    r = await st.http.get("/v1/customers/alice/entitlements/nope", headers=st.api.auth)
    assert "feature 'nope'" in problem(r, 404)["detail"]
    r = await st.http.get("/v1/customers/alice/entitlements")  # no API key
    problem(r, 401)


async def test_another_tenant_cannot_read_a_customers_entitlements_or_get_its_token(
    st: Stack, sessions: Sessions, tenant: TenantKey
) -> None:
    await add_features(sessions, tenant.tenant_id, FEATURES)
    await rotate(sessions, st.settings, datetime.now(UTC))
    other = Client(st.http, await make_tenant(sessions, "globex"))
    await add_features(sessions, "globex", FEATURES[:1])
    for path in ("/v1/customers/alice/entitlements", "/v1/customers/alice/entitlements/sso"):
        r = await st.http.get(path, headers=other.auth)
        assert "customer 'alice'" in problem(r, 404)["detail"]
    r = await st.http.post("/v1/customers/alice/entitlements/token", headers=other.auth)
    problem(r, 404)
    r = await other.send("PUT", "/v1/customers/alice/entitlements/sso/override", {})
    problem(r, 404)
    r = await other.send("POST", "/v1/customers/alice/entitlement-grants", {"feature": "sso"})
    problem(r, 404)
    r = await other.send("PUT", "/v1/plans/pro/entitlements", {"entitlements": []})
    problem(r, 404)
    # nor see its features, plans' terms or configuration
    assert [f["key"] for f in await other.get("/v1/features")] == ["sso"]
    r = await st.http.get("/v1/features/api", headers=other.auth)
    problem(r, 404)
    assert [f["key"] for f in await st.api.get("/v1/features")] == ["api", "sso", "tier"]


# --- what the door refuses and what it publishes -------------------------------------------


async def test_writes_that_do_not_fit_are_refused_at_the_door_naming_the_field(
    st: Stack, sessions: Sessions, tenant: TenantKey
) -> None:
    await add_features(sessions, tenant.tenant_id, FEATURES)
    api = st.api

    r = await api.send("PUT", "/v1/plans/nope/entitlements", {"entitlements": []})
    assert "plan 'nope'" in problem(r, 404)["detail"]
    terms = [
        {"feature": "nope"},  # no such feature
        {"feature": "sso", "limit": "5"},  # a limit of a boolean feature
        {"feature": "tier", "config": {"rps": 50}},  # fits
        {"feature": "api", "config": {"a": 1}, "limit": "100"},  # config of a metered one
        {"feature": "tier", "limit_mode": "soft"},  # listed twice, and a soft limit of config
        {"feature": "sso", "limit": None, "limit_mode": "hard"},  # what a read shows: fits
    ]
    r = await api.send("PUT", "/v1/plans/pro/entitlements", {"entitlements": terms})
    assert fields(r) == [
        "entitlements[0].feature",
        "entitlements[1].limit",
        "entitlements[3].config",
        "entitlements[4].feature",
        "entitlements[4].limit_mode",
        "entitlements[5].feature",
    ]

    base = "/v1/customers/alice/entitlements"
    r = await api.send("PUT", "/v1/customers/bob/entitlements/sso/override", {})
    assert "customer 'bob'" in problem(r, 404)["detail"]
    r = await api.send("PUT", f"{base}/nope/override", {})
    assert "feature 'nope'" in problem(r, 404)["detail"]
    r = await api.http.delete(f"{base}/nope/override", headers=api.auth)
    assert "feature 'nope'" in problem(r, 404)["detail"]
    r = await api.send("PUT", f"{base}/sso/override", {"config": {"a": 1}})
    assert fields(r) == ["config"]
    r = await api.send("PUT", f"{base}/tier/override", {"limit": "5", "limit_mode": "soft"})
    assert fields(r) == ["limit", "limit_mode"]

    grants = "/v1/customers/alice/entitlement-grants"
    r = await api.send("POST", "/v1/customers/bob/entitlement-grants", {"feature": "sso"})
    problem(r, 404)
    r = await api.send("POST", grants, {"feature": "nope"})
    assert fields(r) == ["feature"]
    r = await api.send("POST", grants, {"feature": "sso", "units": "10"})
    assert fields(r) == ["units"]
    start = datetime(2031, 1, 1, tzinfo=UTC)
    window = {"starts_at": start.isoformat(), "expires_at": start.isoformat()}
    r = await api.send("POST", grants, {"feature": "api", "units": "10", **window})
    assert fields(r) == ["expires_at"]
    r = await api.send("POST", grants, {"feature": "api", "units": 1.5})  # a float: never
    assert fields(r) == ["units"]

    r = await api.send("PUT", "/v1/entitlements/config", {"rate_limit_feature": "nope"})
    assert fields(r) == ["rate_limit_feature"]
    r = await api.send("PUT", "/v1/entitlements/config", {"rate_limit_feature": "sso"})
    assert "config feature" in problem(r, 422)["errors"][0]["reason"]

    r = await api.send("POST", "/v1/features", {"key": "x", "name": "X", "kind": "metered"})
    assert fields(r) == ["meter"]
    boolean = {"key": "x", "name": "X", "kind": "boolean", "meter": "calls"}
    r = await api.send("POST", "/v1/features", boolean)
    assert fields(r) == ["meter"]

    assert await topic_size(st.settings, topics.COMMANDS_ENTITLEMENTS) == 0  # nothing sent


async def test_accepted_writes_publish_their_commands_keyed_by_tenant_or_customer(
    st: Stack, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    await add_features(sessions, t, FEATURES)
    api = st.api
    accepted = []

    async def write(method: str, path: str, body: Any, **headers: str) -> dict[str, Any]:
        r = await api.http.request(method, path, json=body, headers={**api.auth, **headers})
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/v1/commands/{r.json()['command_id']}"
        answer: dict[str, Any] = r.json()
        accepted.append(answer["command_id"])
        return answer

    await write("POST", "/v1/features", {"key": "seats", "name": "Seats", "kind": "config"})
    terms = [
        {"feature": "api", "limit": "10000", "limit_mode": "hard"},
        {"feature": "sso"},
        {"feature": "tier", "config": {"tier": "pro", "rps": 50}},
    ]
    await write("PUT", "/v1/plans/pro/entitlements", {"entitlements": terms})
    await write("PUT", "/v1/customers/alice/entitlements/api/override", {"limit": "20000.5"})
    grant = {"feature": "api", "units": "5000", "expires_at": "2031-01-01T00:00:00Z"}
    first = await write("POST", "/v1/customers/alice/entitlement-grants", grant, **{
        "Idempotency-Key": "grant-1"
    })  # fmt: skip
    assert first["grant_id"].startswith("egr_")
    # the same request again: the same answer, nothing published twice
    r = await api.http.post(
        "/v1/customers/alice/entitlement-grants",
        json=grant,
        headers={**api.auth, "Idempotency-Key": "grant-1"},
    )
    assert (r.status_code, r.json(), r.headers["idempotent-replayed"]) == (202, first, "true")
    await write("POST", "/v1/customers/alice/entitlement-grants", {"id": "g-2", "feature": "sso"})
    await write("DELETE", "/v1/customers/alice/entitlements/api/override", None)
    await write("PUT", "/v1/entitlements/config", {"rate_limit_feature": "tier"})

    records = await read_topic(st.settings, topics.COMMANDS_ENTITLEMENTS, 7)
    by_id = {json.loads(r.value)["id"]: r for r in records}
    assert set(by_id) == set(accepted)
    sent = [(json.loads(by_id[i].value), by_id[i].key.decode()) for i in accepted]
    customer_key = topics.partition_key(t, "alice")
    assert [(c["type"], key) for c, key in sent] == [
        ("CreateFeature", t),
        ("SetPlanEntitlements", t),
        ("SetEntitlementOverride", customer_key),
        ("GrantEntitlement", customer_key),
        ("GrantEntitlement", customer_key),
        ("RemoveEntitlementOverride", customer_key),
        ("ConfigureEntitlements", t),
    ]
    assert all(c["tenantid"] == t for c, _ in sent)
    data = [c["data"] for c, _ in sent]
    assert data[0] == {"key": "seats", "name": "Seats", "kind": "config"}
    assert data[1]["plan"] == "pro"
    assert [(g["feature"], g.get("limit"), g.get("config")) for g in data[1]["entitlements"]] == [
        ("api", "10000", None), ("sso", None, None), ("tier", None, {"tier": "pro", "rps": 50})
    ]  # fmt: skip
    assert (data[2]["customer"], data[2]["feature"], data[2]["limit"]) == (
        "alice",
        "api",
        "20000.5",
    )
    assert data[2]["enabled"] is True
    assert (data[3]["id"], data[3]["units"], data[3]["customer"]) == (
        first["grant_id"], "5000", "alice"
    )  # fmt: skip
    assert data[4]["id"] == "g-2"
    assert data[5] == {"customer": "alice", "feature": "api"}
    assert data[6] == {"payment_grace_hours": 72, "token_ttl_seconds": 900,
                       "rate_limit_feature": "tier"}  # fmt: skip

    # commands wait for the entitlements worker; the configuration reads its defaults until
    assert await api.get("/v1/entitlements/config") == {
        "payment_grace_hours": 72, "token_ttl_seconds": 900, "rate_limit_feature": None
    }  # fmt: skip
    assert await api.get("/v1/plans/pro/entitlements") == {"plan": "pro", "entitlements": []}


# --- tokens and the public keys -------------------------------------------------------------


async def jwks(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get("/.well-known/jwks.json")  # no API key
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "public, max-age=300"
    body: dict[str, Any] = r.json()
    return body


def verify(token: str, keys: dict[str, Any]) -> dict[str, Any]:
    """The claims of ``token``, verified with the JWKS as any gateway would (PyJWT)."""
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in keys["keys"] if k["kid"] == kid]
    claims: dict[str, Any] = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=["EdDSA"], issuer="billstream"
    )
    return claims


async def test_a_token_verifies_with_the_public_keys_and_names_the_callers_tenant(
    st: Stack, sessions: Sessions, tenant: TenantKey
) -> None:
    api, token_path = st.api, "/v1/customers/alice/entitlements/token"
    # no key yet: 503, retry later; nothing published
    r = await api.http.post(token_path, headers=api.auth)
    assert problem(r, 503)["type"] == "urn:billstream:problem:signing_key_unavailable"
    assert int(r.headers["retry-after"]) > 0
    assert await jwks(st.http) == {"keys": []}

    now = datetime.now(UTC)
    old = await rotate(sessions, st.settings, now - timedelta(days=3))
    kid = await rotate(sessions, st.settings, now - timedelta(days=2))  # old retired 2 days ago
    keys = await jwks(st.http)
    assert [k["kid"] for k in keys["keys"]] == [kid]  # a key retired over a day ago is gone
    (jwk,) = keys["keys"]
    assert {k: jwk[k] for k in ("kty", "crv", "alg", "use")} == {
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig"
    }  # fmt: skip

    r = await api.http.post(token_path, headers=api.auth)
    assert r.status_code == 200, r.text
    issued = r.json()
    assert issued["kid"] == kid != old
    claims = verify(issued["token"], keys)
    assert jwt.get_unverified_header(issued["token"]) == {"alg": "EdDSA", "typ": "JWT", "kid": kid}
    assert (claims["sub"], claims["tid"], claims["status"]) == ("alice", tenant.tenant_id, "active")
    assert (claims["products"], claims["features"], claims["rate_limit_tier"]) == ([], {}, None)
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == 900  # the default token_ttl_seconds
    assert abs(claims["iat"] - now.timestamp()) < 60
    assert datetime.fromisoformat(issued["expires_at"]) == datetime.fromtimestamp(
        claims["exp"], UTC
    )
    again = (await api.http.post(token_path, headers=api.auth)).json()
    assert verify(again["token"], keys)["jti"] != claims["jti"]  # a new token each time

    # a tampered token does not verify
    head, _, sig = issued["token"].split(".")
    forged = json.dumps({**claims, "tid": "globex"}, separators=(",", ":")).encode()
    with pytest.raises(jwt.InvalidSignatureError):
        verify(f"{head}.{jwt.utils.base64url_encode(forged).decode()}.{sig}", keys)

    # another tenant's token for its own customer names that tenant
    other = Client(st.http, await make_tenant(sessions, "globex"))
    await other.ok("POST", "/v1/customers", {**ALICE, "name": "Alice of Globex"})
    r = await st.http.post(token_path, headers=other.auth)
    assert r.status_code == 200, r.text
    assert (verify(r.json()["token"], keys)["tid"], verify(r.json()["token"], keys)["sub"]) == (
        "globex", "alice"
    )  # fmt: skip

    # rotated: the retired key stays published, so the token it signed still verifies
    new = await rotate(sessions, st.settings, datetime.now(UTC))
    keys = await jwks(st.http)
    assert [k["kid"] for k in keys["keys"]] == [kid, new]
    assert verify(issued["token"], keys)["sub"] == "alice"


async def test_without_the_secrets_key_a_token_is_503_with_retry_after(
    st: Stack, sessions: Sessions, tenant: TenantKey, settings: Settings
) -> None:
    await rotate(sessions, st.settings, datetime.now(UTC))
    assert settings.secrets_key is None
    async with ingress(settings) as base, httpx.AsyncClient(base_url=base) as http:
        r = await http.post("/v1/customers/alice/entitlements/token", headers=st.api.auth)
        assert problem(r, 503)["type"] == "urn:billstream:problem:secrets_key_missing"
        assert int(r.headers["retry-after"]) > 0
        assert len((await jwks(http))["keys"]) == 1  # public keys need no secret
        # and another secrets key cannot read the private key either
        async with ingress(with_secrets(settings)) as base2:
            r = await http.post(
                f"{base2}/v1/customers/alice/entitlements/token", headers=st.api.auth
            )
            assert problem(r, 503)["type"] == "urn:billstream:problem:secrets_key_missing"


# --- end to end, with the entitlements worker --------------------------------------------------


@pytest.fixture
async def full(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = with_secrets(
        settings.model_copy(update={"invoicing_tick_s": 0.2, "entitlements_tick_s": 0.2})
    )
    workers = (build_metering(s), build_invoicing(s), build_entitlements(s))
    async with stack(s, tenant, *workers) as st_:
        await st_.api.ok(
            "POST", "/v1/meters", {"key": "calls", "event_type": "api.call", "aggregation": "count"}
        )
        await st_.api.ok("POST", "/v1/customers", ALICE)
        await st_.api.ok("POST", "/v1/plans", PRO)
        yield st_


async def until(api: Client, path: str, done: Any, timeout_s: float = 30) -> dict[str, Any]:
    """The answer at ``path`` once ``done(answer)`` holds (the worker applies commands and
    events asynchronously)."""

    async def reached() -> dict[str, Any] | None:
        answer: dict[str, Any] = await api.get(path)
        return answer if done(answer) else None

    found: dict[str, Any] = await wait_for(reached, timeout_s=timeout_s, interval_s=0.1)
    return found


def a_month_after(t: datetime) -> datetime:
    return t.replace(year=t.year + t.month // 12, month=t.month % 12 + 1)


async def test_a_subscription_gives_the_plans_features_and_its_token_carries_them(
    full: Stack, tenant: TenantKey
) -> None:
    api = full.api
    for spec in FEATURES:
        await api.ok("POST", "/v1/features", spec)
    assert [f["key"] for f in await api.get("/v1/features")] == ["api", "sso", "tier"]
    assert (await api.get("/v1/features/api"))["meter"] == "calls"
    terms = [
        {"feature": "api", "config": None, "limit": "3", "limit_mode": "hard"},
        {"feature": "sso", "config": None, "limit": None, "limit_mode": "hard"},
        {"feature": "tier", "config": {"rps": 50}, "limit": None, "limit_mode": "hard"},
    ]
    await api.ok("PUT", "/v1/plans/pro/entitlements", {"entitlements": terms})
    read = await api.get("/v1/plans/pro/entitlements")
    assert read == {"plan": "pro", "entitlements": terms}
    # what was read writes back
    await api.ok("PUT", "/v1/plans/pro/entitlements", {"entitlements": read["entitlements"]})
    config = {"payment_grace_hours": 24, "token_ttl_seconds": 600, "rate_limit_feature": "tier"}
    await api.ok("PUT", "/v1/entitlements/config", config)
    assert await api.get("/v1/entitlements/config") == config

    sso = await api.get("/v1/customers/alice/entitlements/sso")
    assert (sso["has_access"], sso["reason"]) == (False, "not_subscribed")

    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    sub = {"customer": "alice", "plan": "pro", "start": start.isoformat()}
    await api.ok("POST", "/v1/subscriptions", sub)
    path = "/v1/customers/alice/entitlements"
    answer = await until(api, path, lambda a: a["products"] == ["pro"])
    assert answer["status"] == "active"
    views = {e["feature"]: e for e in answer["entitlements"]}
    assert {k: (v["has_access"], v["source"]) for k, v in views.items()} == {
        "api": (True, "plan"), "sso": (True, "plan"), "tier": (True, "plan")
    }  # fmt: skip
    assert views["tier"]["config"] == {"rps": 50}
    api_view = views["api"]
    assert (api_view["usage"], api_view["limit"], api_view["remaining"]) == ("0", "3", "3")
    assert datetime.fromisoformat(api_view["period_start"]) == start
    assert datetime.fromisoformat(api_view["resets_at"]) == a_month_after(start)

    # the token: the worker makes the first signing key on its first tick
    async def token() -> dict[str, Any] | None:
        r = await api.http.post(f"{path}/token", headers=api.auth)
        if r.status_code == 503:
            return None
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    issued = await wait_for(token, timeout_s=30, interval_s=0.2)
    claims = verify(issued["token"], await jwks(full.http))
    assert (claims["sub"], claims["tid"], claims["products"]) == (
        "alice",
        tenant.tenant_id,
        ["pro"],
    )
    assert claims["exp"] - claims["iat"] == 600
    assert claims["rate_limit_tier"] == {"rps": 50}
    assert claims["features"] == {
        "api": {"access": True, "limit": "3", "remaining": "3",
                "resets_at": a_month_after(start).isoformat()},
        "sso": {"access": True},
        "tier": {"access": True, "config": {"rps": 50}},
    }  # fmt: skip

    # an override takes sso away; removing it gives it back
    await api.ok("PUT", f"{path}/sso/override", {"enabled": False})
    sso = await until(api, f"{path}/sso", lambda v: not v["has_access"])
    assert (sso["source"], sso["reason"]) == (None, "not_subscribed")  # nothing gives it
    await api.ok("DELETE", f"{path}/sso/override", None)
    await until(api, f"{path}/sso", lambda v: v["has_access"] and v["source"] == "plan")

    # a grant of 2 more calls: the limit is 3 + 2 = 5; 5 calls reach it, and a hard limit denies
    r = await api.send("POST", "/v1/customers/alice/entitlement-grants", {
        "feature": "api", "units": "2"
    })  # fmt: skip
    assert r.status_code == 202, r.text
    outcome = await api.outcome(r.json()["command_id"])
    assert outcome["status"] == "succeeded", outcome
    await until(api, f"{path}/api", lambda v: v["limit"] == "5")
    now = datetime.now(UTC)
    calls = [
        {"id": f"call-{i}", "source": "tests", "type": "api.call", "subject": "alice",
         "time": now.isoformat(), "data": {}}
        for i in range(5)
    ]  # fmt: skip
    await full.send_usage(calls)
    denied = await until(api, f"{path}/api", lambda v: v["usage"] == "5")
    assert (denied["has_access"], denied["reason"]) == (False, "limit_reached")
    assert (denied["remaining"], denied["limit_reached"]) == ("0", True)


# --- the fast path (workers/ingress/fastpath.py) answers as the framework did -----------------


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """``app`` on uvicorn on a free loopback port (its lifespan run)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, timeout_s=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def without_fast_path(settings: Settings) -> FastAPI:
    """The ingress as it was before the fast path: every check through the door, FastAPI's
    routing and the routes in workers/ingress/entitlement_checks.py."""
    app = create_app(settings)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CheckFastPath]
    return app


def seen(r: httpx.Response, given_id: str | None) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Status, body and headers in order — but the date, and a request id the server made
    (checked to be there, and one line)."""
    headers = []
    for name, value in r.headers.multi_items():
        if name == "date":
            continue
        if name == "x-request-id" and given_id is None:
            assert value and "\n" not in value
            value = "(generated)"
        headers.append((name, value))
    return r.status_code, r.content, headers


async def test_the_fast_path_answers_every_check_exactly_as_the_framework_did(
    st: Stack, sessions: Sessions, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_features(sessions, tenant.tenant_id, FEATURES)
    async with sessions() as db, db.begin():  # a config the customer has, by override
        db.add(
            OverrideRow(
                tenant_id=tenant.tenant_id,
                customer="alice",
                feature="tier",
                enabled=True,
                config={"tier": "gold", "burst": 1.5, "names": ["é", None]},
                limit=None,
                limit_mode="hard",
            )
        )
    answered: list[tuple[str, str | None]] = []
    real = fastpath.check_body

    async def counted(reader: Any, tenant_id: str, customer: str, feature: str | None) -> bytes:
        answered.append((customer, feature))
        return await real(reader, tenant_id, customer, feature)

    monkeypatch.setattr(fastpath, "check_body", counted)
    auth = st.api.auth
    cases: list[tuple[str, dict[str, str], int, bool]] = [  # path, headers, status, fast
        ("/v1/customers/alice/entitlements", auth, 200, True),
        ("/v1/customers/alice/entitlements/sso", auth, 200, True),
        ("/v1/customers/alice/entitlements/tier", auth, 200, True),
        ("/v1/customers/alice/entitlements/api", {**auth, "X-Request-Id": "req-7"}, 200, True),
        ("/v1/customers/bob/entitlements", auth, 404, True),
        ("/v1/customers/bob/entitlements/sso", auth, 404, True),
        ("/v1/customers/alice/entitlements/nope", auth, 404, True),
        ("/v1/customers/alice/entitlements", {}, 401, False),
        ("/v1/customers/alice/entitlements/sso", {"Authorization": "Bearer nope"}, 401, False),
        ("/v1/customers/alice/entitlements/sso", {"Authorization": "Basic eDp5"}, 401, False),
        # a control character: the door's 422 (after authentication); a key that does not
        # fit its pattern: FastAPI's; both left to them
        ("/v1/customers/al%01ice/entitlements", auth, 422, False),
        ("/v1/customers/alice/entitlements/s%00so", auth, 422, False),
        ("/v1/customers/al%01ice/entitlements", {}, 401, False),
        ("/v1/customers/-alice/entitlements", auth, 422, False),
        ("/v1/customers/alice/entitlements/SSO", auth, 422, False),
        ("/v1/customers/alice/entitlements?at=now", auth, 200, False),
        ("/v1/customers/alice/entitlements/sso", {**auth, "X-Request-Id": "a\tb"}, 200, True),
    ]
    async with (
        serving(without_fast_path(st.settings)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as slow,
    ):
        for path, headers, status, fast in cases:
            before = len(answered)
            new = await st.http.get(path, headers=headers)
            assert len(answered) == before + fast, path  # answered by the fast path, or not
            old = await slow.get(path, headers=headers)
            assert len(answered) == before + fast, path  # the other never reaches it
            given = headers.get("X-Request-Id") if path.endswith("/api") else None
            assert seen(new, given) == seen(old, given), path
            assert new.status_code == status, (path, new.text)
    # what a user reads, by hand
    tier = (await st.http.get("/v1/customers/alice/entitlements/tier", headers=auth)).json()
    assert (tier["has_access"], tier["source"], tier["config"]) == (
        True,
        "override",
        {"tier": "gold", "burst": 1.5, "names": ["é", None]},
    )
    r = await st.http.get("/v1/customers/alice/entitlements/api", headers=auth)
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"]


async def test_a_check_whose_database_is_down_is_503_with_retry_after_on_either_path(
    settings: Settings, tenant: TenantKey
) -> None:
    down = settings.model_copy(
        update={"database_url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"}
    )
    fast_app, slow_app = create_app(down), without_fast_path(down)
    async with (
        serving(fast_app) as fast_base,
        serving(slow_app) as slow_base,
        httpx.AsyncClient(base_url=fast_base, timeout=30) as fast,
        httpx.AsyncClient(base_url=slow_base, timeout=30) as slow,
    ):
        path = "/v1/customers/alice/entitlements/sso"
        auth = {"Authorization": f"Bearer {tenant.api_key}", "X-Request-Id": "down-1"}
        # the key cannot be verified: the door's 503
        answers = [await c.get(path, headers=auth) for c in (fast, slow)]
        # the key known (verified a moment ago): the check's own read fails
        for app in (fast_app, slow_app):
            app.state.ingress.keys.put(tenant.api_key, tenant.tenant_id)
        answers += [await c.get(path, headers=auth) for c in (fast, slow)]
    for r in answers:
        body = problem(r, 503)
        assert body["type"] == "urn:billstream:problem:dependency_unavailable"
        assert r.headers["retry-after"] == "5"
        assert r.headers["x-request-id"] == "down-1"
    assert seen(answers[0], "down-1") == seen(answers[1], "down-1")
    assert seen(answers[2], "down-1") == seen(answers[3], "down-1")


async def test_a_check_still_answers_after_postgresql_dropped_the_connections_it_keeps(
    st: Stack, sessions: Sessions, tenant: TenantKey
) -> None:
    await add_features(sessions, tenant.tenant_id, FEATURES)
    first = await st.api.get("/v1/customers/alice/entitlements/sso")
    async with sessions() as db, db.begin():  # as a restart or a network cut would
        dropped = (
            await db.execute(
                text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                    "FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                    "AND datname = current_database() "
                    "AND query LIKE '%FROM entitlement_subscriptions%'"
                )
            )
        ).scalar_one()
    assert dropped >= 1
    assert await st.api.get("/v1/customers/alice/entitlements/sso") == first
