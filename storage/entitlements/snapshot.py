"""What a check reads: one customer's rows (``Snapshot``), in one statement — JSON aggregates
of every table, one round trip — either in a transaction (``EntitlementRepository.snapshot``)
or straight on a pooled connection outside any (``read_snapshot``, the check's hot path)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import Base
from storage.entitlements.models import (
    ConfigRow,
    FeatureRow,
    GrantRow,
    OverrideRow,
    PlanGrantRow,
    SubscriptionRow,
    UnpaidRow,
    UsageRow,
)

# --- what a check reads ---------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything one customer's entitlements are computed from, as stored."""

    tenant_id: str
    customer: str
    features: Sequence[FeatureRow]
    subscriptions: Sequence[SubscriptionRow]  # active ones
    plan_grants: Sequence[PlanGrantRow]  # of those subscriptions' plans
    overrides: Sequence[OverrideRow]
    grants: Sequence[GrantRow]  # in force at the snapshot's time, or later
    usage: Sequence[UsageRow]  # of the metered features' meters, latest periods
    unpaid: Sequence[UnpaidRow]
    config: ConfigRow | None
    customer_known: bool = True  # in invoicing's customers (read by the check's statement)


# --- one customer's snapshot in one statement (the check's hot path) ---------------------------

SNAPSHOT = """
    WITH subs AS (
        SELECT * FROM entitlement_subscriptions
        WHERE tenant_id = $1 AND customer = $2 AND status = 'active'
    ), feats AS (
        SELECT * FROM entitlement_features
        WHERE tenant_id = $1 AND (CAST($4 AS text) IS NULL OR key = $4)
    )
    SELECT
      (SELECT json_agg(x ORDER BY x.key)::text FROM feats x),
      (SELECT json_agg(x ORDER BY x.current_period_start, x.subscription_id)::text
         FROM subs x),
      (SELECT json_agg(x)::text FROM entitlement_plan_grants x
         WHERE x.tenant_id = $1 AND x.plan IN (SELECT plan FROM subs)
           AND x.feature IN (SELECT key FROM feats)),
      (SELECT json_agg(x)::text FROM entitlement_overrides x
         WHERE x.tenant_id = $1 AND x.customer = $2 AND x.feature IN (SELECT key FROM feats)),
      (SELECT json_agg(x)::text FROM entitlement_grants x
         WHERE x.tenant_id = $1 AND x.customer = $2 AND x.feature IN (SELECT key FROM feats)
           AND (x.expires_at IS NULL OR x.expires_at > $3)),
      (SELECT json_agg(x)::text FROM entitlement_usage x
         WHERE x.tenant_id = $1 AND x.customer = $2 AND x.period_end > $3
           AND x.meter IN (SELECT meter FROM feats)),
      (SELECT json_agg(x)::text FROM entitlement_unpaid x
         WHERE x.tenant_id = $1 AND x.customer = $2),
      (SELECT json_agg(x)::text FROM entitlement_configs x WHERE x.tenant_id = $1),
      EXISTS (SELECT 1 FROM customers x WHERE x.tenant_id = $1 AND x.external_id = $2)
"""  # positional ($1 tenant, $2 customer, $3 at, $4 feature or null): asyncpg's own style
_SNAPSHOT_MODELS: tuple[type[Base], ...] = (
    FeatureRow,
    SubscriptionRow,
    PlanGrantRow,
    OverrideRow,
    GrantRow,
    UsageRow,
    UnpaidRow,
    ConfigRow,
)
_TIMES = frozenset(
    {
        "created_at",
        "starts_at",
        "expires_at",
        "due_at",
        "current_period_start",
        "current_period_end",
        "period_start",
        "period_end",
        "updated_at",
        "failed_at",
    }
)


async def read_snapshot(
    engine: AsyncEngine, tenant_id: str, customer: str, at: datetime, *, feature: str | None = None
) -> Snapshot:
    """``EntitlementRepository.snapshot`` without a session or a transaction: one statement
    straight on a pooled asyncpg connection (a single statement reads one consistent
    snapshot of the database). A check is the hottest read there is."""
    async with engine.connect() as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection  # asyncpg's
        row = await driver.fetchrow(SNAPSHOT, tenant_id, customer, at, feature)
    return from_row(tenant_id, customer, tuple(row))


def from_row(tenant_id: str, customer: str, row: tuple[Any, ...]) -> Snapshot:
    *lists, exists = row
    features, subs, plan_grants, overrides, grants, usage, unpaid, config = (
        _rows(model, text_) for model, text_ in zip(_SNAPSHOT_MODELS, lists, strict=True)
    )
    return Snapshot(
        tenant_id,
        customer,
        features,
        subs,
        plan_grants,
        overrides,
        grants,
        usage,
        unpaid,
        config[0] if config else None,
        customer_known=bool(exists),
    )


def _rows(model: Any, text_: str | None) -> list[Any]:
    """Transient rows of ``model`` from PostgreSQL's JSON of them: quantities exact
    (Decimal), times parsed, configurations as the JSONB column reads them."""
    if text_ is None:
        return []
    names = model.__table__.columns.keys()
    return [
        model(**{k: _value(k, v) for k, v in item.items() if k in names})
        for item in json.loads(text_, parse_float=Decimal)
    ]


_QUANTITIES = frozenset({"limit", "units", "usage"})


def _value(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _TIMES:
        return datetime.fromisoformat(value)
    if name in _QUANTITIES:
        return Decimal(value)
    if name == "config":
        return _plain_json(value)
    return value


def _plain_json(value: Any) -> Any:
    """JSON as ``json.loads`` reads it (floats), from a parse that kept decimals."""
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    return float(value) if isinstance(value, Decimal) else value
