"""docs/entitlements.md's gateway example, run exactly as the page shows it: the block after
``<!-- entitlements-gateway -->`` is loaded as a module of its own (it imports no billstream
code) and its FastAPI app is called through httpx, while its ``PyJWKClient`` fetches the keys
from a real ingress over HTTP. Real broker and PostgreSQL; the invoicing worker turns
subscriptions into events, the entitlements worker keeps the read model and makes the
signing key.

A subscribed customer's token is admitted; a customer without the feature, a customer whose
payment failed, no token, a tampered token, an expired one, one signed by another key and another
tenant's are refused."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import topics
from schemas.payments import PaymentFailed, PaymentFailureData
from storage.entitlements import EntitlementRepository
from tests.conftest import TenantKey, make_tenant
from tests.integration.http import Client
from tests.integration.receipts_support import with_secrets
from tests.integration.support import Sessions, producer
from tests.integration.test_invoicing import Stack, stack
from workers.devstack import wait_for
from workers.entitlements import Signer, signer
from workers.entitlements.app import build as build_entitlements
from workers.invoicing.app import build as build_invoicing
from workers.settings import Settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "entitlements.md"


def gateway_code() -> str:
    found = re.search(
        r"<!-- entitlements-gateway -->\n```python\n(.*?)\n```", PAGE.read_text(), re.S
    )
    assert found, "docs/entitlements.md has no gateway block"
    code = found[1]
    assert "billstream" not in re.sub(r'"billstream"|BILLSTREAM_\w+', "", code), (
        "the gateway uses no billstream code"
    )
    dependency = re.search(r"^def entitled\(.*?^    return check$", code, re.S | re.M)
    assert dependency, "the block defines the dependency entitled(feature)"
    assert len(dependency[0].splitlines()) <= 13, "the page promises about ten lines"
    return code


def gateway(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, base: str, tenant: str
) -> httpx.AsyncClient:
    """The page's app, configured as the page says (its environment), behind an httpx client."""
    module = tmp / f"gateway_{tenant}.py"
    module.write_text(gateway_code())
    monkeypatch.setenv("BILLSTREAM_JWKS_URL", f"{base}/.well-known/jwks.json")
    monkeypatch.setenv("BILLSTREAM_TENANT", tenant)
    spec = importlib.util.spec_from_file_location(module.stem, module)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    app = loaded.app
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


async def call(gw: httpx.AsyncClient, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return await gw.get("/reports", headers=headers)


# --- a stack and two tenants, each with a plan that gives 'reports' and one that does not ----

TIER = {"tier": "pro", "requests_per_second": 50}
PRO = {
    "key": "pro",
    "name": "Pro",
    "currency": "USD",
    "interval": "month",
    "prices": [{"kind": "flat", "key": "base", "name": "Pro", "amount": "49.00"}],
}
BASIC = {**PRO, "key": "basic", "name": "Basic"}


@pytest.fixture
def s(settings: Settings) -> Settings:
    return with_secrets(settings).model_copy(update={"entitlements_tick_s": 0.2})


@pytest.fixture
async def st(s: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    async with stack(s, tenant, build_invoicing(s), build_entitlements(s)) as st_:
        yield st_


async def catalogue(api: Client) -> None:
    """Features ``reports`` (boolean) and ``rate-limit`` (config); plan ``pro`` gives both,
    ``basic`` only the rate limit; tokens carry ``rate-limit`` as the tier."""
    await api.ok("POST", "/v1/features", {"key": "reports", "name": "Reports", "kind": "boolean"})
    await api.ok("POST", "/v1/features", {"key": "rate-limit", "name": "Rate", "kind": "config"})
    # no grace: a failed payment denies access at once
    config = {"rate_limit_feature": "rate-limit", "payment_grace_hours": 0}
    await api.ok("PUT", "/v1/entitlements/config", config)
    for plan in (PRO, BASIC):
        await api.ok("POST", "/v1/plans", plan)
    await api.ok(
        "PUT",
        "/v1/plans/pro/entitlements",
        {"entitlements": [{"feature": "reports"}, {"feature": "rate-limit", "config": TIER}]},
    )
    basic = {"entitlements": [{"feature": "rate-limit", "config": {"tier": "basic"}}]}
    await api.ok("PUT", "/v1/plans/basic/entitlements", basic)


async def subscribe(api: Client, customer: str, plan: str) -> None:
    await api.ok(
        "POST", "/v1/customers", {"external_id": customer, "name": customer, "currency": "USD"}
    )
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    await api.ok(
        "POST",
        "/v1/subscriptions",
        {"customer": customer, "plan": plan, "start": start.isoformat()},
    )

    async def subscribed() -> bool:
        answer = await api.get(f"/v1/customers/{customer}/entitlements")
        return bool(answer["products"] == [plan])

    await wait_for(subscribed, timeout_s=30)


async def payment_fails(s: Settings, api: Client, customer: str) -> None:
    """A ``payment.failed`` as payments publishes it; with no grace, access is denied."""
    tenant = api.key.tenant_id
    data = PaymentFailureData(
        payment_id="pay-1", invoice_id="in-1", customer=customer, amount=4900, currency="USD",
        attempt=1, failure_code="card_declined",
    )  # fmt: skip
    event = PaymentFailed(source="tests", tenantid=tenant, subject="in-1", data=data)
    async with producer(s) as p:
        key = topics.partition_key(tenant, customer).encode()
        await p.send_and_wait(topics.EVENTS_PAYMENTS, event.to_json(), key=key)

    async def denied() -> bool:
        answer = await api.get(f"/v1/customers/{customer}/entitlements")
        return bool(answer["status"] == "payment_pending")

    await wait_for(denied, timeout_s=30)


async def token_of(api: Client, customer: str) -> str:
    """A token (the worker makes the first signing key on its first sweep: 503 until then)."""

    async def issued() -> str | None:
        r = await api.http.post(f"/v1/customers/{customer}/entitlements/token", headers=api.auth)
        if r.status_code == 503:
            assert "Retry-After" in r.headers
            return None
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token

    found: str = await wait_for(issued, timeout_s=30)
    return found


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, claims, _ = token.split(".")
    return decoded(header), decoded(claims)


def decoded(part: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


async def deployment_signer(s: Settings, sessions: Sessions) -> Signer:
    async with sessions() as db:
        row = await EntitlementRepository(db).current_signing_key()
    assert row is not None
    return signer(s, row)


# --- the tests -------------------------------------------------------------------------------


async def test_the_page_gateway_admits_a_subscribed_customer_and_refuses_the_rest(
    st: Stack,
    s: Settings,
    sessions: Sessions,
    tenant: TenantKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = st.api
    base = str(st.http.base_url).rstrip("/")
    await catalogue(api)
    await subscribe(api, "trattoria-3", "pro")
    await subscribe(api, "cafe-11", "basic")
    await subscribe(api, "osteria-5", "pro")
    pro, basic = await token_of(api, "trattoria-3"), await token_of(api, "cafe-11")
    await payment_fails(s, api, "osteria-5")
    unpaid = await token_of(api, "osteria-5")

    async with gateway(tmp_path, monkeypatch, base, tenant.tenant_id) as gw:
        # a customer whose plan gives the feature: admitted, the route sees its claims
        r = await call(gw, pro)
        assert (r.status_code, r.json()) == (200, {"customer": "trattoria-3", "tier": TIER})

        # a customer whose plan does not give it: its valid token is refused
        r = await call(gw, basic)
        assert r.status_code == 403, r.text
        assert parts(basic)[1]["features"] == {
            "rate-limit": {"access": True, "config": {"tier": "basic"}}
        }

        # a customer whose plan gives it but whose payment failed (no grace): refused
        r = await call(gw, unpaid)
        assert r.status_code == 403, r.text
        assert parts(unpaid)[1]["status"] == "payment_pending"
        assert parts(unpaid)[1]["features"]["reports"] == {
            "access": False,
            "reason": "payment_pending",
        }

        # no token, a malformed one
        assert (await call(gw, None)).status_code == 401
        assert (await call(gw, "not-a-jwt")).status_code == 401

        # tampered: the basic customer's claims with 'reports' added, the signature kept
        header, claims = parts(basic)
        claims["features"]["reports"] = {"access": True}
        forged = ".".join(
            [basic.split(".")[0], b64(json.dumps(claims).encode()), basic.split(".")[2]]
        )
        assert (await call(gw, forged)).status_code == 401

        # the same claims signed by another key, under the deployment's kid or a kid of its own
        other = Ed25519PrivateKey.generate()
        assert (await call(gw, Signer(header["kid"], other).sign(claims))).status_code == 401
        assert (await call(gw, Signer("k" * 43, other).sign(claims))).status_code == 401

        # expired: the pro customer's claims signed by the deployment's own key, but past 'exp'
        # (and, to show only the time refuses it, the same claims with a future 'exp' admitted)
        real = await deployment_signer(s, sessions)
        _, claims = parts(pro)
        now = int(datetime.now(UTC).timestamp())
        past = {**claims, "iat": now - 1000, "nbf": now - 1000, "exp": now - 60}
        assert (await call(gw, real.sign(past))).status_code == 401
        future = {**claims, "iat": now, "nbf": now, "exp": now + 60}
        assert (await call(gw, real.sign(future))).status_code == 200
        # not yet valid
        later = {**claims, "iat": now + 600, "nbf": now + 600, "exp": now + 900}
        assert (await call(gw, real.sign(later))).status_code == 401
        # another issuer
        assert (await call(gw, real.sign({**future, "iss": "elsewhere"}))).status_code == 401


async def test_the_page_gateway_refuses_another_tenants_token(
    st: Stack,
    sessions: Sessions,
    tenant: TenantKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Signing keys are the deployment's: a token of another tenant verifies, and only the
    ``tid`` check keeps it out."""
    globex = Client(st.http, await make_tenant(sessions, "globex"))
    base = str(st.http.base_url).rstrip("/")
    await catalogue(globex)
    await subscribe(globex, "trattoria-3", "pro")  # the same external id, another tenant
    token = await token_of(globex, "trattoria-3")
    assert parts(token)[1]["tid"] == "globex"

    async with gateway(tmp_path, monkeypatch, base, tenant.tenant_id) as gw:
        r = await call(gw, token)
        assert r.status_code == 403, r.text
    async with gateway(tmp_path, monkeypatch, base, "globex") as gw:
        r = await call(gw, token)
        assert (r.status_code, r.json()) == (200, {"customer": "trattoria-3", "tier": TIER})
