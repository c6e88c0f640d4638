"""The entitlement check (``GET /v1/customers/{customer}/entitlements[/{feature}]``),
signed entitlement tokens and the public keys they verify with (docs/entitlements.md).

A check is the hot path: the customer's rows from memory (``SnapshotCache``: kept until
PostgreSQL announces a change to one of them), else one statement on a connection kept for
checks, outside any transaction (``SnapshotReader``); then the one pure function every
answer and every event comes from (``entitlements.evaluate``). The fast path
(``fastpath.py``) answers both checks without the framework, with the same bytes as the
routes declared here. A token is that answer, signed: the signing key is kept
``SIGNING_KEY_CACHE_S`` per process.

``/.well-known/jwks.json`` needs no API key: it is the deployment's, not a tenant's (the
door only authenticates routes that need a tenant). ``…/entitlements/token`` (POST) is
declared before nothing it could capture.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from schemas.entitlements import (
    KEY_ID_PATTERN,
    CustomerEntitlements,
    EntitlementsConfig,
    EntitlementView,
)
from schemas.envelope import new_id
from storage.entitlements import EntitlementRepository
from storage.entitlements.cache import SnapshotCache
from storage.entitlements.snapshot import SnapshotReader
from workers import entitlements, payments
from workers.ingress.deps import IngressState, State, Tenant, Unit
from workers.ingress.problems import Problem, not_found
from workers.runtime import Tx

if TYPE_CHECKING:
    from storage.entitlements import Snapshot

from workers.ingress.entitlements import PENDING_HINT, CustomerPath, FeaturePath

router = APIRouter(tags=["entitlements"])

#: how long one ingress process signs with the key it read (a rotation shows within this)
SIGNING_KEY_CACHE_S = 30.0
#: how long anyone may cache the public keys: a new key is published longer than this
#: before it signs (entitlements.SIGNS_AFTER), a retired one kept a day after it stopped
KEYS_MAX_AGE_S = 300
#: the worker makes the first key on its first tick (entitlements_tick_s, 5 s by default)
KEY_RETRY_AFTER_S = 5


# --- the check -----------------------------------------------------------------------------


def snapshots(app_state: Any) -> SnapshotCache:
    """The process's ``SnapshotCache`` over its ``SnapshotReader`` (kept on the app's state,
    made on the first check; ``workers/ingress/fastpath.install`` closes it when the app
    stops)."""
    cache: SnapshotCache | None = getattr(app_state, "entitlement_snapshots", None)
    if cache is None:
        st: IngressState = app_state.ingress
        # as many checks on PostgreSQL at once as the pool's size (the rest of the ingress
        # has its overflow): fewer would queue checks behind a PostgreSQL short of CPU
        keep = st.settings.database_pool_size
        reader = SnapshotReader(st.database.engine, keep=keep)
        cache = app_state.entitlement_snapshots = SnapshotCache(reader)
    return cache


async def _check(
    reader: SnapshotCache, tenant_id: str, customer: str, feature: str | None = None
) -> tuple[Snapshot, CustomerEntitlements, datetime]:
    """The customer's entitlements now (``feature``: that one only), from memory or one
    statement outside any transaction (``SnapshotCache``): the hottest read of the API."""
    now = datetime.now(UTC)
    snap = await reader.read(tenant_id, customer, now, feature=feature)
    if not snap.customer_known:
        raise not_found("customer", customer, PENDING_HINT)
    if feature is not None and not snap.features:
        raise not_found("feature", feature, PENDING_HINT)
    return snap, entitlements.evaluate(snap, now), now


async def check_body(
    reader: SnapshotCache, tenant_id: str, customer: str, feature: str | None
) -> bytes:
    """The JSON a check answers (``feature``: that feature's view, else every feature's):
    the routes below and the fast path (``fastpath.py``) send these bytes."""
    _, answer, _ = await _check(reader, tenant_id, customer, feature)
    if feature is None:
        return answer.model_dump_json().encode()
    (view,) = answer.entitlements
    return view.model_dump_json().encode()


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


# Both checks are answered by the fast path (fastpath.py) before FastAPI sees them; these
# declare them (OpenAPI, validation of odd paths) and answer any request it passes on.


@router.get(
    "/v1/customers/{customer}/entitlements",
    response_model=CustomerEntitlements,
    summary="What a customer may use now: every feature",
)
async def check_entitlements(
    request: Request, customer: CustomerPath, tenant_id: Tenant
) -> Response:
    """Every feature of the tenant, each with ``has_access`` and, when denied, the
    ``reason``: ``not_subscribed``, ``limit_reached`` (a hard limit), ``payment_pending``
    (a payment failed and its grace is over) or ``suspended`` (dunning exhausted). Metered
    features show ``usage``, ``limit``, ``remaining`` and ``resets_at``."""
    body = await check_body(snapshots(request.app.state), tenant_id, customer, None)
    return Response(body, media_type="application/json")


@router.get(
    "/v1/customers/{customer}/entitlements/{feature}",
    response_model=EntitlementView,
    summary="May a customer use this feature now?",
)
async def check_entitlement(
    request: Request, customer: CustomerPath, feature: FeaturePath, tenant_id: Tenant
) -> Response:
    body = await check_body(snapshots(request.app.state), tenant_id, customer, feature)
    return Response(body, media_type="application/json")


# --- tokens and their keys -----------------------------------------------------------------


class TokenView(BaseModel):
    token: str = Field(description="A JWT (EdDSA), verifiable with /.well-known/jwks.json")
    expires_at: datetime
    kid: str = Field(pattern=KEY_ID_PATTERN, description="The key that signed it")


@dataclass
class SigningKeyCache:
    """The current signing key of one ingress process, decrypted, for ``ttl_s`` seconds."""

    ttl_s: float = SIGNING_KEY_CACHE_S
    signer: entitlements.Signer | None = None
    until: float = 0.0

    async def get(self, st: IngressState, tx: Tx) -> entitlements.Signer:
        if self.signer is not None and time.monotonic() < self.until:
            return self.signer
        if st.settings.secrets_key is None:
            raise _no_secrets_key()
        row = await tx.repo(EntitlementRepository).signing_key(
            datetime.now(UTC), entitlements.SIGNS_AFTER
        )
        if row is None:
            raise Problem(
                503,
                "signing_key_unavailable",
                "No token signing key yet",
                "the entitlements worker makes the first signing key when it starts; retry shortly",
                headers={"Retry-After": str(KEY_RETRY_AFTER_S)},
            )
        try:
            signer = entitlements.signer(st.settings, row)
        except (payments.SecretsKeyMissing, payments.SecretUnreadable):
            raise _no_secrets_key() from None
        self.signer, self.until = signer, time.monotonic() + self.ttl_s
        return signer


def _no_secrets_key() -> Problem:
    return Problem(
        503,
        "secrets_key_missing",
        "Tokens cannot be signed",
        "the operator must set BILLSTREAM_SECRETS_KEY (the key the signing keys are "
        "encrypted under)",
        headers={"Retry-After": str(KEY_RETRY_AFTER_S)},
    )


def _signing_keys(request: Request) -> SigningKeyCache:
    state = request.app.state
    cache: SigningKeyCache | None = getattr(state, "entitlement_signing_key", None)
    if cache is None:
        cache = state.entitlement_signing_key = SigningKeyCache()
    return cache


@router.post(
    "/v1/customers/{customer}/entitlements/token",
    response_model=TokenView,
    summary="A signed entitlement token for a customer, to verify offline",
)
async def issue_token(
    request: Request, customer: CustomerPath, st: State, tx: Unit, tenant_id: Tenant
) -> Response:
    """A short-lived JWT (EdDSA; ``kid`` in its header) carrying the check's answer: ``sub``
    (the customer), ``tid`` (the tenant), ``iat``/``nbf``/``exp`` (the tenant's
    ``token_ttl_seconds``), ``status``, ``products``, ``features`` (those the customer has
    by plan, override or grant: ``access``, ``reason``, ``config``, ``limit``,
    ``remaining``, ``resets_at``) and ``rate_limit_tier``. Verify it with the keys at
    ``/.well-known/jwks.json``. Nothing is stored: every call makes a new token, so
    ``Idempotency-Key`` does not apply. 503 with ``Retry-After`` until the first signing key
    exists (the entitlements worker makes it when it starts)."""
    snap, answer, now = await _check(snapshots(request.app.state), tenant_id, customer)
    signer = await _signing_keys(request).get(st, tx)
    config = snap.config or EntitlementsConfig()
    claims = entitlements.token_claims(
        tenant_id,
        answer,
        issuer=st.settings.entitlements_issuer,
        now=now,
        ttl_seconds=config.token_ttl_seconds,
        rate_limit_feature=config.rate_limit_feature,
        token_id=new_id(),
    )
    view = TokenView(
        token=signer.sign(claims),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        kid=signer.kid,
    )
    return _json(view)


class Jwk(BaseModel):
    """A public key (RFC 7517, RFC 8037)."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str = Field(description="The raw public key, base64url without padding.")
    kid: str = Field(pattern=KEY_ID_PATTERN, description="RFC 7638 thumbprint.")
    alg: Literal["EdDSA"]
    use: Literal["sig"]


class Jwks(BaseModel):
    keys: list[Jwk] = Field(
        description="The current key and those retired in the last day, oldest first."
    )


@router.get(
    "/.well-known/jwks.json",
    response_model=Jwks,
    summary="The public keys entitlement tokens are signed with (JWKS); no API key",
    responses={
        200: {
            "description": "The current key and the recently retired ones",
            "headers": {
                "Cache-Control": {
                    "required": True,
                    "description": f"public, max-age={KEYS_MAX_AGE_S}",
                    "schema": {"type": "string"},
                }
            },
        }
    },
)
async def jwks(tx: Unit) -> Response:
    """The deployment's keys (not a tenant's): a gateway verifies any tenant's tokens with
    them, and checks ``tid``. ``{"keys": []}`` until the entitlements worker made the first.
    May be cached five minutes: a gateway meeting an unknown ``kid`` should fetch again."""
    rows = await tx.repo(EntitlementRepository).published_keys(
        datetime.now(UTC) - entitlements.PUBLISHED_AFTER_RETIRED
    )
    return JSONResponse(
        entitlements.jwks(rows), headers={"Cache-Control": f"public, max-age={KEYS_MAX_AGE_S}"}
    )
