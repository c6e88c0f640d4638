"""The entitlements commands: one table from command type to its handler, ``f(command, tx,
ctx) -> result`` (the outcome at ``/v1/commands/{id}``). A ``PermanentError`` fails the
command: nothing it wrote or emitted is kept.

A command that changes what customers have announces them: one customer at once (overrides,
grants); a plan's subscribers, or a tenant's customers with unpaid invoices, are marked
stale in one statement and announced by the tick in chunks (it is woken on commit)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas import topics
from schemas.entitlements import (
    MAX_FEATURES,
    MAX_GRANTS,
    ConfigureEntitlements,
    CreateFeature,
    FeatureData,
    Grant,
    GrantEntitlement,
    RemoveEntitlementOverride,
    SetEntitlementOverride,
    SetPlanEntitlements,
)
from storage.entitlements import EntitlementRepository, FeatureRow
from storage.metering import MeterRepository
from workers.entitlements import service
from workers.entitlements.announce import announce
from workers.entitlements.errors import (
    FeatureConflict,
    GrantConflict,
    KindMismatch,
    TooManyFeatures,
    TooManyGrants,
    UnknownCustomer,
    UnknownFeature,
    UnknownMeter,
    UnknownPlan,
)
from workers.entitlements.service import Cause
from workers.runtime import Tx

STALE_REASON = "entitlements_changed"


@dataclass(frozen=True)
class Context:
    now: datetime
    wake: Callable[[], None] = lambda: None  # the tick, to announce stale customers soon


Handler = Callable[[Any, Tx, Context], Awaitable[dict[str, Any]]]


async def create_feature(command: CreateFeature, tx: Tx, ctx: Context) -> dict[str, Any]:
    """The same key again with the same kind and meter renames it; another kind or meter
    fails and changes nothing."""
    spec, tenant = command.data, command.tenantid
    repo = tx.repo(EntitlementRepository)
    existing = await repo.feature(tenant, spec.key)
    if existing is None:
        if await repo.count_features(tenant) >= MAX_FEATURES:
            raise TooManyFeatures(f"a tenant has at most {MAX_FEATURES} features", field="key")
        if (
            spec.meter is not None
            and await tx.repo(MeterRepository).get(tenant, spec.meter) is None
        ):
            raise UnknownMeter(f"no meter {spec.meter!r}", field="meter")
        if await repo.add_feature(
            tenant, spec.key, spec.name, spec.kind, spec.meter, spec.description
        ):
            feature = service.feature_created(tenant, FeatureData(**spec.model_dump()))
            tx.emit(feature, topic=topics.EVENTS_ENTITLEMENTS, key=topics.partition_key(tenant))
            return {"feature": spec.key, "created": True}
        existing = await repo.feature(tenant, spec.key)
        assert existing is not None
    if (existing.kind, existing.meter) != (spec.kind, spec.meter):
        was = existing.kind + (f" on meter {existing.meter!r}" if existing.meter else "")
        raise FeatureConflict(
            f"feature {spec.key!r} is already defined as {was}",
            field="kind" if existing.kind != spec.kind else "meter",
        )
    await repo.rename_feature(tenant, spec.key, spec.name, spec.description)
    return {"feature": spec.key, "created": False}


def _fits(g: Grant, f: FeatureRow, at: str) -> None:
    if g.config is not None and f.kind != "config":
        raise KindMismatch(
            f"feature {f.key!r} is {f.kind}: only config features take a config",
            field=f"{at}config",
        )
    if g.limit is not None and f.kind != "metered":
        raise KindMismatch(
            f"feature {f.key!r} is {f.kind}: only metered features take a limit",
            field=f"{at}limit",
        )


def _columns(g: Grant, f: FeatureRow) -> dict[str, Any]:
    return {
        "config": g.config if f.kind == "config" else None,
        "limit": g.limit if f.kind == "metered" else None,
        "limit_mode": g.limit_mode,
    }


async def set_plan_entitlements(
    command: SetPlanEntitlements, tx: Tx, ctx: Context
) -> dict[str, Any]:
    """Replaces the plan's features; its subscribers are announced by the tick."""
    spec, tenant = command.data, command.tenantid
    repo = tx.repo(EntitlementRepository)
    if not await repo.plan_intervals([(tenant, spec.plan)]):
        raise UnknownPlan(f"no plan {spec.plan!r}", field="plan")
    features = await repo.features_by_key(tenant, [g.feature for g in spec.entitlements])
    rows = []
    for i, g in enumerate(spec.entitlements):
        f = features.get(g.feature)
        if f is None:
            raise UnknownFeature(f"no feature {g.feature!r}", field=f"entitlements.{i}.feature")
        _fits(g, f, f"entitlements.{i}.")
        rows.append({"feature": g.feature, **_columns(g, f)})
    await repo.set_plan_grants(tenant, spec.plan, rows)
    await repo.mark_stale_plan(tenant, spec.plan, STALE_REASON, ctx.now)
    tx.after_commit(ctx.wake)
    return {"plan": spec.plan, "entitlements": len(rows)}


async def _customer_and_feature(tx: Tx, tenant: str, customer: str, feature: str) -> FeatureRow:
    repo = tx.repo(EntitlementRepository)
    if not await repo.customer_exists(tenant, customer):
        raise UnknownCustomer(f"no customer {customer!r}", field="customer")
    f = await repo.feature(tenant, feature)
    if f is None:
        raise UnknownFeature(f"no feature {feature!r}", field="feature")
    return f


async def set_override(command: SetEntitlementOverride, tx: Tx, ctx: Context) -> dict[str, Any]:
    spec, tenant = command.data, command.tenantid
    f = await _customer_and_feature(tx, tenant, spec.customer, spec.feature)
    _fits(spec, f, "")
    await tx.repo(EntitlementRepository).set_override(
        tenant, spec.customer, feature=spec.feature, enabled=spec.enabled, **_columns(spec, f)
    )
    await announce(tx, {(tenant, spec.customer): Cause("override", "override")}, ctx.now)
    return {"customer": spec.customer, "feature": spec.feature}


async def remove_override(
    command: RemoveEntitlementOverride, tx: Tx, ctx: Context
) -> dict[str, Any]:
    spec, tenant = command.data, command.tenantid
    await _customer_and_feature(tx, tenant, spec.customer, spec.feature)
    removed = await tx.repo(EntitlementRepository).remove_override(
        tenant, spec.customer, spec.feature
    )
    await announce(tx, {(tenant, spec.customer): Cause("override", "override")}, ctx.now)
    return {"customer": spec.customer, "feature": spec.feature, "removed": removed}


async def grant(command: GrantEntitlement, tx: Tx, ctx: Context) -> dict[str, Any]:
    """Idempotent by id: the same grant again succeeds, another one under its id fails."""
    spec, tenant = command.data, command.tenantid
    f = await _customer_and_feature(tx, tenant, spec.customer, spec.feature)
    if spec.units is not None and f.kind != "metered":
        raise KindMismatch(
            f"feature {f.key!r} is {f.kind}: only metered features take units", field="units"
        )
    repo = tx.repo(EntitlementRepository)
    result = {"grant_id": spec.id, "customer": spec.customer, "feature": spec.feature}
    existing = await repo.grant(tenant, spec.id)
    if existing is not None:
        same = (
            existing.customer == spec.customer
            and existing.feature == spec.feature
            and existing.units == spec.units
            and existing.expires_at == spec.expires_at
            and (spec.starts_at is None or existing.starts_at == spec.starts_at)
        )
        if not same:
            raise GrantConflict(f"grant {spec.id!r} exists with other terms", field="id")
        return result
    if await repo.count_live_grants(tenant, spec.customer, ctx.now) >= MAX_GRANTS:
        raise TooManyGrants(
            f"a customer has at most {MAX_GRANTS} grants not yet expired", field="customer"
        )
    starts = spec.starts_at or ctx.now
    due = next((t for t in (starts, spec.expires_at) if t is not None and t > ctx.now), None)
    await repo.add_grant(
        tenant_id=tenant,
        id=spec.id,
        customer=spec.customer,
        feature=spec.feature,
        units=spec.units,
        starts_at=starts,
        expires_at=spec.expires_at,
        due_at=due,
    )
    await announce(tx, {(tenant, spec.customer): Cause("grant", "grant_expired")}, ctx.now)
    return result


async def configure(command: ConfigureEntitlements, tx: Tx, ctx: Context) -> dict[str, Any]:
    """The grace changes the standing of customers with unpaid invoices: they are
    announced by the tick."""
    spec, tenant = command.data, command.tenantid
    repo = tx.repo(EntitlementRepository)
    if spec.rate_limit_feature is not None:
        f = await repo.feature(tenant, spec.rate_limit_feature)
        if f is None:
            raise UnknownFeature(
                f"no feature {spec.rate_limit_feature!r}", field="rate_limit_feature"
            )
        if f.kind != "config":
            raise KindMismatch(
                f"feature {f.key!r} is {f.kind}: the rate-limit tier is a config feature's",
                field="rate_limit_feature",
            )
    await repo.set_config(tenant, **spec.model_dump())
    await repo.mark_stale_unpaid(tenant, STALE_REASON, ctx.now)
    tx.after_commit(ctx.wake)
    return spec.model_dump()


COMMANDS: dict[type[Any], Handler] = {
    CreateFeature: create_feature,
    SetPlanEntitlements: set_plan_entitlements,
    SetEntitlementOverride: set_override,
    RemoveEntitlementOverride: remove_override,
    GrantEntitlement: grant,
    ConfigureEntitlements: configure,
}
