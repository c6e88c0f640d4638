"""The entitlements repository's set-based helpers: the rows a batch passes (usage totals,
limit hits), derived tables of (tenant, customer) pairs, and the statements written in SQL."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    select,
    text,
)

from schemas.entitlements import EntitlementsConfig

# --- set-based helpers --------------------------------------------------------------------

DEFAULT_GRACE_HOURS = EntitlementsConfig().payment_grace_hours


@dataclass(frozen=True)
class UsageTotal:
    tenant_id: str
    customer: str
    meter: str
    period_start: datetime
    period_end: datetime
    usage: Decimal


@dataclass(frozen=True)
class Hit:
    tenant_id: str
    customer: str
    feature: str
    period_start: datetime
    period_end: datetime
    usage: Decimal
    limit: Decimal
    limit_mode: str


def pairs_table(pairs: Iterable[tuple[str, str]]) -> Any:
    """A derived table ``v(t, c)`` of the pairs (arrays: one bind parameter each)."""
    items = list(pairs)
    return (
        func.unnest(
            cast(bindparam(None, [a for a, _ in items], type_=ARRAY(Text)), ARRAY(Text)),
            cast(bindparam(None, [b for _, b in items], type_=ARRAY(Text)), ARRAY(Text)),
        )
        .table_valued("t", "c")
        .render_derived(name="v")
    )


def of_pairs(model: Any, pairs: Iterable[tuple[str, str]]) -> Any:
    """``select(model)`` of the rows of these (tenant, customer) pairs."""
    v = pairs_table(pairs)
    return select(model).join(v, and_(model.tenant_id == v.c.t, model.customer == v.c.c))


def next_boundary(starts_at: Any, expires_at: Any, now: datetime) -> Any:
    """A grant's next start or expiry after ``now`` (null: none)."""
    return case((starts_at > now, starts_at), (expires_at > now, expires_at), else_=None)


SET_USAGE = text(
    """
    INSERT INTO entitlement_usage
      (tenant_id, customer, meter, period_start, period_end, usage, updated_at)
    SELECT t, c, m, ps, pe, u, CAST(:now AS timestamptz)
    FROM unnest(CAST(:t AS text[]), CAST(:c AS text[]), CAST(:m AS text[]),
                CAST(:ps AS timestamptz[]), CAST(:pe AS timestamptz[]), CAST(:u AS numeric[]))
      AS v(t, c, m, ps, pe, u)
    ON CONFLICT (tenant_id, customer, meter, period_start) DO UPDATE
    SET usage = EXCLUDED.usage, period_end = EXCLUDED.period_end,
        updated_at = EXCLUDED.updated_at
    """
)
RECORD_HITS = text(
    """
    INSERT INTO entitlement_limit_hits AS h
      (tenant_id, customer, feature, period_start, period_end, usage, "limit", limit_mode,
       reached_at)
    SELECT t, c, f, ps, pe, u, l, m, CAST(:now AS timestamptz)
    FROM unnest(CAST(:t AS text[]), CAST(:c AS text[]), CAST(:f AS text[]),
                CAST(:ps AS timestamptz[]), CAST(:pe AS timestamptz[]), CAST(:u AS numeric[]),
                CAST(:l AS numeric[]), CAST(:m AS text[]))
      AS v(t, c, f, ps, pe, u, l, m)
    ON CONFLICT (tenant_id, customer, feature, period_start) DO UPDATE
    SET restored_at = NULL, usage = EXCLUDED.usage, "limit" = EXCLUDED."limit",
        limit_mode = EXCLUDED.limit_mode, reached_at = EXCLUDED.reached_at
    WHERE h.restored_at IS NOT NULL
    RETURNING h.tenant_id, h.customer, h.feature, h.period_start
    """
)
SAVE_STANDINGS = text(
    """
    INSERT INTO entitlement_standing (tenant_id, customer, status, features, changed_at)
    SELECT t, c, s, CAST(f AS jsonb), CAST(:now AS timestamptz)
    FROM unnest(CAST(:t AS text[]), CAST(:c AS text[]), CAST(:s AS text[]),
                CAST(:f AS text[])) AS v(t, c, s, f)
    ON CONFLICT (tenant_id, customer) DO UPDATE
    SET status = EXCLUDED.status, features = EXCLUDED.features,
        changed_at = EXCLUDED.changed_at
    """
)
STALE_PLAN = text(
    """
    INSERT INTO entitlement_stale (tenant_id, customer, reason, marked_at)
    SELECT DISTINCT tenant_id, customer, CAST(:r AS text), CAST(:now AS timestamptz)
    FROM entitlement_subscriptions
    WHERE tenant_id = :t AND plan = :p AND status = 'active'
    ON CONFLICT (tenant_id, customer) DO UPDATE SET reason = EXCLUDED.reason
    """
)
STALE_UNPAID = text(
    """
    INSERT INTO entitlement_stale (tenant_id, customer, reason, marked_at)
    SELECT DISTINCT tenant_id, customer, CAST(:r AS text), CAST(:now AS timestamptz)
    FROM entitlement_unpaid WHERE tenant_id = :t
    ON CONFLICT (tenant_id, customer) DO UPDATE SET reason = EXCLUDED.reason
    """
)
