"""The entitlements API's definitions (docs/entitlements.md): features, what plans,
overrides and one-off grants give of them, and the tenant's configuration. The check of a
customer's entitlements, tokens and their public keys are in entitlement_checks.py.

Writes become commands on ``billstream.commands.entitlements.v1`` (202 + command id), keyed
by the tenant (features, plans, the configuration) or ``tenant:customer`` (overrides and
grants, so one customer's stay in order). The door refuses at once what it can check: an
unknown plan, customer or feature in the path (404); an unknown feature in a body, or a
field that does not fit the feature's kind — ``config`` only for config features,
``limit``/a soft ``limit_mode`` only for metered ones, ``units`` only for metered grants —
422 naming the field. The worker checks again (a feature may change in between).

Routes are declared in match order: the override's path before nothing it could capture;
``/v1/features/{key}`` after ``/v1/features``.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from schemas import topics
from schemas.bounds import EXTERNAL_ID_PATTERN, ID_PATTERN, Line
from schemas.bounds import Text as LongText
from schemas.entitlements import (
    FEATURE_KEY_PATTERN,
    MAX_PLAN_ENTITLEMENTS,
    Config,
    ConfigureEntitlements,
    CreateFeature,
    EntitlementsConfig,
    FeatureKind,
    FeatureSpec,
    Grant,
    GrantEntitlement,
    GrantSpec,
    LimitMode,
    OverrideRef,
    OverrideSpec,
    PlanEntitlementsSpec,
    RemoveEntitlementOverride,
    SetEntitlementOverride,
    SetPlanEntitlements,
)
from schemas.envelope import new_id
from schemas.metering import METER_KEY_PATTERN
from schemas.pricing import KEY_PATTERN as PLAN_KEY_PATTERN
from schemas.pricing import Quantity
from storage.entitlements import EntitlementRepository
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.fields import Instant
from workers.ingress.problems import Problem, invalid, not_found
from workers.ingress.routes import CommandAccepted, send_command
from workers.runtime import Tx

if TYPE_CHECKING:
    from storage.entitlements import FeatureRow

router = APIRouter(tags=["entitlements"])

CustomerPath = Annotated[
    str, Path(pattern=EXTERNAL_ID_PATTERN, description="The customer's external_id.")
]
FeaturePath = Annotated[str, Path(pattern=FEATURE_KEY_PATTERN, description="A feature's key.")]
PlanPath = Annotated[str, Path(pattern=PLAN_KEY_PATTERN, description="A plan's key.")]
PENDING_HINT = " (if its create command is still pending, retry when it has succeeded)"
_ACCEPTED: dict[str, Any] = {"status_code": 202, "response_model": CommandAccepted}


_send = functools.partial(send_command, topic=topics.COMMANDS_ENTITLEMENTS)
"""``send_command`` on billstream.commands.entitlements.v1."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- what fits a feature's kind --------------------------------------------------------


def _misfits(
    kind: str, key: str, prefix: str, *, config: Any, limit: Any, limit_mode: str | None
) -> list[dict[str, str]]:
    """The fields given that mean nothing for a feature of ``kind`` (nulls, and the default
    ``limit_mode`` a read shows, are harmless: what was read can be written back)."""
    errors = []
    if config is not None and kind != "config":
        errors.append(
            {"field": f"{prefix}config", "reason": f"only for config features; {key!r} is {kind}"}
        )
    if kind != "metered":
        if limit is not None:
            errors.append(
                {
                    "field": f"{prefix}limit",
                    "reason": f"only for metered features; {key!r} is {kind}",
                }
            )
        if limit_mode == "soft":
            errors.append(
                {
                    "field": f"{prefix}limit_mode",
                    "reason": f"only for metered features; {key!r} is {kind}",
                }
            )
    return errors


def _refuse(errors: list[dict[str, str]]) -> None:
    if errors:
        raise _invalid(errors)


def _invalid(errors: list[dict[str, str]]) -> Problem:
    return invalid("; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5]), errors)


async def _feature(tx: Tx, tenant_id: str, key: str) -> FeatureRow:
    row = await tx.repo(EntitlementRepository).feature(tenant_id, key)
    if row is None:
        raise not_found("feature", key, PENDING_HINT)
    return row


async def _customer(tx: Tx, tenant_id: str, external_id: str) -> None:
    if not await tx.repo(EntitlementRepository).customer_exists(tenant_id, external_id):
        raise not_found("customer", external_id, PENDING_HINT)


# --- features ----------------------------------------------------------------------------


class FeatureIn(_In):
    """A feature (``FeatureSpec``); ``meter`` is for metered features only, and required."""

    key: str = Field(pattern=FEATURE_KEY_PATTERN, description="Unique per tenant, e.g. 'sso'.")
    name: Line = Field(min_length=1, max_length=256)
    kind: FeatureKind = Field(
        description="boolean: access or not; config: access with a JSON configuration; "
        "metered: access up to a limit on a meter per billing period"
    )
    meter: str | None = Field(
        default=None,
        pattern=METER_KEY_PATTERN,
        description="The meter a metered feature counts (its key); only for kind 'metered'",
    )
    description: LongText | None = Field(default=None, max_length=2048)


class FeatureView(BaseModel):
    key: str
    name: str
    kind: FeatureKind
    meter: str | None
    description: str | None
    created_at: datetime


def _feature_view(row: FeatureRow) -> FeatureView:
    return FeatureView.model_validate(row, from_attributes=True)


@router.post("/v1/features", summary="Define a feature (command)", **_ACCEPTED)
async def create_feature(
    request: Request, body: FeatureIn, st: State, tenant_id: Tenant
) -> Response:
    """Publishes a ``CreateFeature`` command. The same key again with the same kind and
    meter updates its name and description; another kind or meter fails the command and
    changes nothing."""
    if body.kind == "metered" and body.meter is None:
        _refuse([{"field": "meter", "reason": "a metered feature names the meter it counts"}])
    if body.kind != "metered" and body.meter is not None:
        _refuse([{"field": "meter", "reason": f"only for metered features, not {body.kind!r}"}])
    spec = FeatureSpec(**body.model_dump())
    return await _send(
        request, st, tenant_id, CreateFeature, spec, topics.partition_key(tenant_id), spec.key
    )


@router.get("/v1/features", response_model=list[FeatureView], summary="The tenant's features")
async def list_features(tx: Unit, tenant_id: Tenant) -> list[FeatureView]:
    return [_feature_view(f) for f in await tx.repo(EntitlementRepository).features(tenant_id)]


@router.get("/v1/features/{key}", response_model=FeatureView, summary="One feature")
async def get_feature(key: FeaturePath, tx: Unit, tenant_id: Tenant) -> FeatureView:
    return _feature_view(await _feature(tx, tenant_id, key))


# --- plans ---------------------------------------------------------------------------------


class PlanEntitlementsIn(_In):
    entitlements: list[Grant] = Field(
        max_length=MAX_PLAN_ENTITLEMENTS,
        description="Every feature of the plan, each once (replaces the list it had)",
    )


class PlanEntitlementsView(BaseModel):
    plan: str
    entitlements: list[Grant]


async def _plan(tx: Tx, tenant_id: str, plan: str) -> None:
    if not await tx.repo(EntitlementRepository).plan_intervals([(tenant_id, plan)]):
        raise not_found("plan", plan, PENDING_HINT)


@router.put(
    "/v1/plans/{plan}/entitlements",
    summary="Set what a plan gives (command)",
    **_ACCEPTED,
)
async def set_plan_entitlements(
    request: Request,
    plan: PlanPath,
    body: PlanEntitlementsIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Replaces the plan's features with ``entitlements``: each an existing feature, once;
    ``config`` for config features, ``limit`` and ``limit_mode`` for metered ones (no
    ``limit``: unlimited). Subscribers gain and lose access as the worker applies it."""
    await _plan(tx, tenant_id, plan)
    features = {f.key: f for f in await tx.repo(EntitlementRepository).features(tenant_id)}
    errors: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, g in enumerate(body.entitlements):
        prefix = f"entitlements[{i}]."
        feature = features.get(g.feature)
        if feature is None:
            errors.append({"field": prefix + "feature", "reason": f"no feature {g.feature!r}"})
            continue
        if g.feature in seen:
            errors.append({"field": prefix + "feature", "reason": f"{g.feature!r} is listed twice"})
        seen.add(g.feature)
        errors += _misfits(
            feature.kind,
            g.feature,
            prefix,
            config=g.config,
            limit=g.limit,
            limit_mode=g.limit_mode,
        )
    _refuse(errors)
    spec = PlanEntitlementsSpec(plan=plan, entitlements=body.entitlements)
    return await _send(
        request, st, tenant_id, SetPlanEntitlements, spec, topics.partition_key(tenant_id), plan
    )


@router.get(
    "/v1/plans/{plan}/entitlements",
    response_model=PlanEntitlementsView,
    summary="What a plan gives",
)
async def get_plan_entitlements(
    plan: PlanPath, tx: Unit, tenant_id: Tenant
) -> PlanEntitlementsView:
    """The plan's features as last set (empty until they are)."""
    await _plan(tx, tenant_id, plan)
    rows = await tx.repo(EntitlementRepository).plan_grants(tenant_id, plan)
    return PlanEntitlementsView(
        plan=plan,
        entitlements=[
            Grant(
                feature=r.feature,
                config=r.config,
                limit=r.limit,
                limit_mode="soft" if r.limit_mode == "soft" else "hard",
            )
            for r in rows
        ],
    )


# --- overrides and one-off grants ----------------------------------------------------------


class OverrideIn(_In):
    enabled: bool = Field(
        default=True,
        description="false: no access to the feature whatever the customer's plans say",
    )
    config: Config | None = Field(default=None, description="For a config feature")
    limit: Quantity | None = Field(
        default=None,
        description="For a metered feature: the usage allowed per billing period (none: unlimited)",
    )
    limit_mode: LimitMode = Field(
        default="hard", description="hard: denied once usage reaches the limit; soft: reported"
    )


@router.put(
    "/v1/customers/{customer}/entitlements/{feature}/override",
    summary="Set a customer's own terms for a feature (command)",
    **_ACCEPTED,
)
async def set_override(
    request: Request,
    customer: CustomerPath,
    feature: FeaturePath,
    body: OverrideIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Replaces what the customer's plans give of the feature (grants still add their
    units). An override of a metered feature without ``limit`` is unlimited."""
    await _customer(tx, tenant_id, customer)
    row = await _feature(tx, tenant_id, feature)
    _refuse(
        _misfits(
            row.kind,
            feature,
            "",
            config=body.config,
            limit=body.limit,
            limit_mode=body.limit_mode,
        )
    )
    spec = OverrideSpec(customer=customer, feature=feature, **body.model_dump())
    return await _send(
        request,
        st,
        tenant_id,
        SetEntitlementOverride,
        spec,
        topics.partition_key(tenant_id, customer),
        customer,
    )


@router.delete(
    "/v1/customers/{customer}/entitlements/{feature}/override",
    summary="Remove a customer's override of a feature (command)",
    **_ACCEPTED,
)
async def remove_override(
    request: Request,
    customer: CustomerPath,
    feature: FeaturePath,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """The customer's plans (and grants) decide again. Removing an override that is not
    there succeeds and changes nothing."""
    await _customer(tx, tenant_id, customer)
    await _feature(tx, tenant_id, feature)
    ref = OverrideRef(customer=customer, feature=feature)
    return await _send(
        request,
        st,
        tenant_id,
        RemoveEntitlementOverride,
        ref,
        topics.partition_key(tenant_id, customer),
        customer,
    )


class EntitlementGrantIn(_In):
    id: str | None = Field(default=None, pattern=ID_PATTERN, description="Default: generated")
    feature: str = Field(pattern=FEATURE_KEY_PATTERN)
    units: Quantity | None = Field(
        default=None,
        description="Metered features: units added to the limit while the grant is in force",
    )
    starts_at: Instant | None = Field(default=None, description="Default: now")
    expires_at: Instant | None = Field(default=None, description="Default: never")


@router.post(
    "/v1/customers/{customer}/entitlement-grants",
    summary="Grant a customer a feature (and units) for a while (command)",
    **_ACCEPTED,
)
async def grant_entitlement(
    request: Request,
    customer: CustomerPath,
    body: EntitlementGrantIn,
    st: State,
    tx: Unit,
    tenant_id: Tenant,
) -> Response:
    """Access to the feature from ``starts_at`` (default: now) until ``expires_at`` (default:
    never), whatever the customer's plans; ``units`` more of a metered feature's limit.
    Answers with the ``grant_id`` at once."""
    await _customer(tx, tenant_id, customer)
    feature = await tx.repo(EntitlementRepository).feature(tenant_id, body.feature)
    if feature is None:
        reason = f"no feature {body.feature!r}{PENDING_HINT}"
        raise _invalid([{"field": "feature", "reason": reason}])
    errors = []
    if body.units is not None and feature.kind != "metered":
        errors.append(
            {
                "field": "units",
                "reason": f"only for metered features; {body.feature!r} is {feature.kind}",
            }
        )
    if body.expires_at is not None and body.expires_at <= (body.starts_at or datetime.now(UTC)):
        errors.append({"field": "expires_at", "reason": "must be after starts_at (or now)"})
    _refuse(errors)
    spec = GrantSpec(
        id=body.id or f"egr_{new_id()}",
        customer=customer,
        feature=body.feature,
        units=body.units,
        starts_at=body.starts_at,
        expires_at=body.expires_at,
    )
    return await _send(
        request,
        st,
        tenant_id,
        GrantEntitlement,
        spec,
        topics.partition_key(tenant_id, customer),
        customer,
        {"grant_id": spec.id},
    )


# --- the tenant's configuration --------------------------------------------------------------


@router.put(
    "/v1/entitlements/config",
    summary="Set the tenant's entitlements configuration (command)",
    **_ACCEPTED,
)
async def configure(
    request: Request, body: EntitlementsConfig, st: State, tx: Unit, tenant_id: Tenant
) -> Response:
    """Replaces the whole configuration (fields left out take their defaults):
    ``payment_grace_hours`` (access kept after a payment fails), ``token_ttl_seconds`` and
    ``rate_limit_feature`` (an existing config feature, whose configuration a token carries
    as ``rate_limit_tier``)."""
    if body.rate_limit_feature is not None:
        feature = await tx.repo(EntitlementRepository).feature(tenant_id, body.rate_limit_feature)
        if feature is None or feature.kind != "config":
            reason = (
                f"no feature {body.rate_limit_feature!r}{PENDING_HINT}"
                if feature is None
                else f"must be a config feature; {feature.key!r} is {feature.kind}"
            )
            _refuse([{"field": "rate_limit_feature", "reason": reason}])
    return await _send(
        request,
        st,
        tenant_id,
        ConfigureEntitlements,
        body,
        topics.partition_key(tenant_id),
        "entitlements_config",
    )


@router.get(
    "/v1/entitlements/config",
    response_model=EntitlementsConfig,
    summary="The tenant's entitlements configuration (the defaults until set)",
)
async def get_config(tx: Unit, tenant_id: Tenant) -> EntitlementsConfig:
    row = await tx.repo(EntitlementRepository).config(tenant_id)
    if row is None:
        return EntitlementsConfig()
    return EntitlementsConfig(
        payment_grace_hours=row.payment_grace_hours,
        token_ttl_seconds=row.token_ttl_seconds,
        rate_limit_feature=row.rate_limit_feature,
    )
