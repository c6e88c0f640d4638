"""Entitlements, pure: what a customer may use now, from what is stored (a ``Snapshot``).

One function answers every check (``evaluate``); the worker calls the same one to decide
which events a change emits, so the API and the events never disagree.

* A feature comes from, in order: the customer's override (``enabled: false`` denies it),
  the plans of its active subscriptions (the largest limit wins, unlimited above all), or
  one-off grants in force. Grants in force add their units to the limit of any source.
* A metered feature's period is its subscription's current billing period (the period of
  the first subscription for an override or a grant; the UTC calendar month for a customer
  without any). ``limit_reached`` when usage >= limit; a hard limit then denies.
* The customer's standing follows its unpaid invoices: none → ``active``; a failed payment
  → ``past_due`` until ``grace_until`` (access kept), then ``payment_pending``; dunning
  exhausted on any → ``suspended``. The last two deny every feature it would have.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from schemas.entitlements import (
    AccessData,
    CustomerEntitlements,
    EntitlementGranted,
    EntitlementLimitReached,
    EntitlementRestored,
    EntitlementRevoked,
    EntitlementsConfig,
    EntitlementSuspended,
    EntitlementView,
    FeatureCreated,
    FeatureData,
    LimitData,
    LimitMode,
    Reason,
    Source,
    Standing,
)
from schemas.envelope import CloudEvent
from workers.invoicing import add_interval

if TYPE_CHECKING:
    from storage.entitlements import (
        FeatureRow,
        GrantRow,
        OverrideRow,
        PlanGrantRow,
        Snapshot,
        SubscriptionRow,
        UnpaidRow,
    )

SOURCE = "billstream/entitlements"
DEFAULTS = EntitlementsConfig()
MAX_PERIODS_AHEAD = 1_200  # a subscription whose periods stopped advancing: a century


# --- periods and standing ---------------------------------------------------------------------


def calendar_month(t: datetime) -> tuple[datetime, datetime]:
    start = t.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, add_interval(start, "month", 1)


def current_period(sub: SubscriptionRow, now: datetime) -> tuple[datetime, datetime]:
    """The subscription's period containing ``now``: its current one as invoicing last said,
    or the ones after it (a billing run advances periods; until it runs, the period after
    the last one reported starts where it ended)."""
    start, end = sub.current_period_start, sub.current_period_end
    for _ in range(MAX_PERIODS_AHEAD):
        if end > now:
            break
        start, end = end, add_interval(end, sub.interval, 1)
    return start, end


def periods(snap: Snapshot, now: datetime) -> set[tuple[datetime, datetime]]:
    """Every period a metered feature of the customer may count now: its subscriptions'
    current ones, or the calendar month without any."""
    if not snap.subscriptions:
        return {calendar_month(now)}
    return {current_period(sub, now) for sub in snap.subscriptions}


def grace_hours(snap: Snapshot) -> int:
    return snap.config.payment_grace_hours if snap.config else DEFAULTS.payment_grace_hours


def standing(
    unpaid: Sequence[UnpaidRow], grace: int, now: datetime
) -> tuple[Standing, datetime | None]:
    """The customer's standing and, while ``past_due``, when the grace ends."""
    if not unpaid:
        return "active", None
    if any(u.exhausted for u in unpaid):
        return "suspended", None
    until = min(u.failed_at for u in unpaid) + timedelta(hours=grace)
    return ("past_due", until) if now < until else ("payment_pending", None)


# --- one feature ------------------------------------------------------------------------------


def _in_force(g: GrantRow, now: datetime) -> bool:
    return g.starts_at <= now and (g.expires_at is None or now < g.expires_at)


def _largest(grants: Sequence[tuple[SubscriptionRow, PlanGrantRow]]) -> tuple[Any, Any]:
    """The plan grant with the largest limit (unlimited first), earliest subscription on ties."""
    return min(grants, key=lambda sg: (sg[1].limit is not None, -(sg[1].limit or 0)))


def feature_view(
    f: FeatureRow,
    snap: Snapshot,
    now: datetime,
    status: Standing,
) -> EntitlementView:
    override: OverrideRow | None = next((o for o in snap.overrides if o.feature == f.key), None)
    plan_of = {s.plan: s for s in snap.subscriptions}
    on_plans = [(plan_of[g.plan], g) for g in snap.plan_grants if g.feature == f.key]
    grants = [g for g in snap.grants if g.feature == f.key and _in_force(g, now)]
    units = sum((g.units for g in grants if g.units is not None), Decimal(0))
    sub: SubscriptionRow | None = snap.subscriptions[0] if snap.subscriptions else None
    source: Source | None
    config: dict[str, Any] | None = None
    limit: Decimal | None = None
    mode: LimitMode = "hard"
    if override is not None and not override.enabled:
        source = None
    elif override is not None:
        source, config, limit, mode = "override", override.config, override.limit, _mode(override)
        limit = None if limit is None else limit + units
    elif on_plans:
        sub, g = _largest(on_plans)
        source, config, mode = "plan", g.config, _mode(g)
        limit = None if g.limit is None else g.limit + units
    elif grants:
        source = "grant"
        limit = units if all(g.units is not None for g in grants) else None
    else:
        source = None

    reason: Reason | None = None if source is not None else "not_subscribed"
    view: dict[str, Any] = {}
    if f.kind == "metered" and source is not None:
        start, end = current_period(sub, now) if sub is not None else calendar_month(now)
        usage = next(
            (u.usage for u in snap.usage if u.meter == f.meter and u.period_start == start),
            Decimal(0),
        )
        reached = limit is not None and usage >= limit
        if reached and mode == "hard":
            reason = "limit_reached"
        view = {
            "usage": usage,
            "limit": limit,
            "remaining": None if limit is None else max(limit - usage, Decimal(0)),
            "limit_mode": mode,
            "limit_reached": reached,
            "period_start": start,
            "resets_at": end,
        }
    if source is not None and status in ("payment_pending", "suspended"):
        reason = status
    return EntitlementView(
        feature=f.key,
        name=f.name,
        kind=f.kind,
        has_access=reason is None,
        reason=reason,
        source=source,
        config=config if f.kind == "config" and source is not None else None,
        meter=f.meter,
        **view,
    )


def _mode(row: PlanGrantRow | OverrideRow) -> LimitMode:
    return "soft" if row.limit_mode == "soft" else "hard"


# --- a customer -------------------------------------------------------------------------------


def evaluate(snap: Snapshot, now: datetime) -> CustomerEntitlements:
    status, until = standing(snap.unpaid, grace_hours(snap), now)
    return CustomerEntitlements(
        customer=snap.customer,
        status=status,
        grace_until=until,
        products=sorted({s.plan for s in snap.subscriptions}),
        entitlements=[feature_view(f, snap, now, status) for f in snap.features],
    )


def entitled(answer: CustomerEntitlements) -> list[str]:
    """The features the customer has by its plans, overrides and grants — whatever its
    standing and limits (those are told by their own events): the set ``entitlement.granted``
    and ``entitlement.revoked`` report changes of."""
    return sorted(e.feature for e in answer.entitlements if e.source is not None)


# --- what changed: the events a new answer emits against what was last announced ---------------


@dataclass(frozen=True)
class Cause:
    """Why a customer is announced: the reasons its events give."""

    granted: str = "entitlements_changed"
    revoked: str = "entitlements_changed"
    restored: str = "paid"
    invoice_id: str | None = None


@dataclass(frozen=True)
class Announced:
    """What was last announced of a customer (``entitlement_standing``)."""

    status: str  # active | payment_pending | suspended
    features: tuple[str, ...]


NEVER = Announced("active", ())


def held(answer: CustomerEntitlements) -> Announced:
    """What ``answer`` announces: past_due keeps access, so it is announced as active."""
    status = "active" if answer.status in ("active", "past_due") else answer.status
    return Announced(status, tuple(entitled(answer)))


def access_events(
    tenant_id: str,
    answer: CustomerEntitlements,
    before: Announced,
    cause: Cause,
    now: datetime,
) -> list[CloudEvent]:
    """``entitlement.granted``/``revoked`` for the features gained and lost,
    ``entitlement.suspended`` when access is denied for money (or denied harder: from
    payment_pending to suspended), ``entitlement.restored`` when it is back. A customer
    that never had a feature is not told about its money."""
    after = held(answer)
    out: list[CloudEvent] = []

    def data(features: Iterable[str], reason: str, invoice: bool = False) -> AccessData:
        return AccessData(
            customer=answer.customer,
            features=sorted(features),
            reason=reason,
            invoice_id=cause.invoice_id if invoice else None,
            at=now,
        )

    gained = set(after.features) - set(before.features)
    lost = set(before.features) - set(after.features)
    if gained:
        out.append(_event(EntitlementGranted, tenant_id, data(gained, cause.granted)))
    if lost:
        out.append(_event(EntitlementRevoked, tenant_id, data(lost, cause.revoked)))
    had = after.features or before.features
    if after.status != before.status and had:
        if after.status == "active":
            out.append(_event(EntitlementRestored, tenant_id, data(had, cause.restored, True)))
        elif before.status == "active" or after.status == "suspended":
            out.append(_event(EntitlementSuspended, tenant_id, data(had, after.status, True)))
    return out


def reached(answer: CustomerEntitlements) -> list[EntitlementView]:
    """The metered features whose limit is reached in their current period."""
    return [
        e
        for e in answer.entitlements
        if e.kind == "metered" and e.limit_reached and e.source is not None
    ]


def limit_reached(tenant_id: str, customer: str, view: EntitlementView) -> CloudEvent:
    assert view.meter and view.limit is not None and view.usage is not None
    assert view.period_start and view.resets_at and view.limit_mode
    return _event(
        EntitlementLimitReached,
        tenant_id,
        LimitData(
            customer=customer,
            feature=view.feature,
            meter=view.meter,
            usage=view.usage,
            limit=view.limit,
            limit_mode=view.limit_mode,
            period_start=view.period_start,
            period_end=view.resets_at,
        ),
    )


def limit_restored(
    tenant_id: str, customer: str, features: Sequence[str], reason: str, now: datetime
) -> CloudEvent:
    """A hard limit no longer denies: ``limit_raised`` or ``period_reset``."""
    data = AccessData(customer=customer, features=sorted(set(features)), reason=reason, at=now)
    return _event(EntitlementRestored, tenant_id, data)


def still_denies(view: EntitlementView | None, period_start: datetime) -> bool | None:
    """Whether a hard limit hit of ``period_start`` still denies: None when the hit no
    longer concerns the feature (no access to it any more, or another period)."""
    if view is None or view.source is None or view.period_start != period_start:
        return None
    return view.limit_reached and view.limit_mode == "hard"


def feature_created(tenant_id: str, spec: FeatureData) -> CloudEvent:
    return _event(FeatureCreated, tenant_id, spec, subject=spec.key)


def _event(cls: Any, tenant_id: str, data: Any, *, subject: str | None = None) -> CloudEvent:
    event: CloudEvent = cls(
        source=SOURCE,
        tenantid=tenant_id,
        subject=subject or getattr(data, "customer", None),
        data=data,
    )
    return event


# --- tokens -----------------------------------------------------------------------------------


def token_claims(
    tenant_id: str,
    answer: CustomerEntitlements,
    *,
    issuer: str,
    now: datetime,
    ttl_seconds: int,
    rate_limit_feature: str | None,
    token_id: str,
) -> dict[str, Any]:
    """The claims of an entitlement token (docs/entitlements.md): who, until when, and
    every feature the customer has access to now, with its configuration and limit."""
    features: dict[str, Any] = {}
    for e in answer.entitlements:
        if e.source is None:
            continue
        claim: dict[str, Any] = {"access": e.has_access}
        if e.reason is not None:
            claim["reason"] = e.reason
        if e.config is not None:
            claim["config"] = e.config
        if e.kind == "metered":
            claim["limit"] = None if e.limit is None else format(e.limit, "f")
            claim["remaining"] = None if e.remaining is None else format(e.remaining, "f")
            claim["resets_at"] = e.resets_at.isoformat() if e.resets_at else None
        features[e.feature] = claim
    tier = next(
        (e.config for e in answer.entitlements if e.feature == rate_limit_feature and e.config),
        None,
    )
    iat = int(now.timestamp())
    return {
        "iss": issuer,
        "sub": answer.customer,
        "tid": tenant_id,
        "iat": iat,
        "nbf": iat,
        "exp": iat + ttl_seconds,
        "jti": token_id,
        "status": answer.status,
        "products": answer.products,
        "features": features,
        "rate_limit_tier": tier,
    }
