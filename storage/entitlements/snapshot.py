"""What a check reads: one customer's rows (``Snapshot``), in one statement — JSON aggregates
of every table, one round trip — either in a transaction (``EntitlementRepository.snapshot``)
or straight on a connection outside any: ``read_snapshot`` (a pooled one) or, on the check's
hot path, ``SnapshotReader`` (connections it keeps checked out, so a check is the statement's
one round trip and nothing else)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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

#: the PostgreSQL channel every change to a row ``SNAPSHOT`` reads is announced on, by the
#: trigger function ``NOTIFY_FUNCTION`` (migration 0032, which repeats both names: a
#: migration does not import the code). Payload, JSON: ``["<tenant>", "<customer>"]`` (that
#: customer's rows), ``["<tenant>"]`` (the tenant's features, plan grants or configuration),
#: ``[]`` (a table truncated: everything). ``cache.SnapshotCache`` listens to it.
NOTIFY_CHANNEL = "billstream_entitlements"
NOTIFY_FUNCTION = "billstream_entitlements_notify"

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


@dataclass(frozen=True)
class _Held:
    conn: AsyncConnection  # checked out of the engine's pool for as long as it is kept
    driver: Any  # its asyncpg connection


class SnapshotReader:
    """``read_snapshot`` for a process that answers checks all day (the ingress).

    A checkout of the engine's pool costs three round trips of its own (the pre-ping is
    ``BEGIN``, ``;``, ``ROLLBACK``) besides the statement's one, and Python around each. This
    keeps up to ``keep`` connections checked out between checks and runs the statement on
    one of them: one round trip per check. At most ``keep`` checks are on the database at
    once; more wait for a connection (in order) rather than check out more.

    A connection whose statement failed is dropped (invalidated). A kept connection can have
    died meanwhile (PostgreSQL restarted, a network cut): if the statement finds it gone, it
    runs once more on a fresh checkout (pre-pinged) — a read, so trying again is harmless —
    and that one's error, if any, is the caller's (PostgreSQL down: a transient error).
    ``close`` gives the kept connections back; call it before the engine is disposed."""

    def __init__(self, engine: AsyncEngine, *, keep: int) -> None:
        self.engine = engine
        self.keep = keep
        self._idle: list[_Held] = []
        self._slots = asyncio.Semaphore(keep)
        self._closed = False
        self.statements = 0  # how many times the statement ran (tests, the cache's proof)

    async def read(
        self, tenant_id: str, customer: str, at: datetime, *, feature: str | None = None
    ) -> Snapshot:
        async with self._slots:  # so idle + in use <= keep
            kept = bool(self._idle)
            held = self._idle.pop() if kept else await self._checkout()
            while True:
                self.statements += 1
                try:
                    row = await held.driver.fetchrow(SNAPSHOT, tenant_id, customer, at, feature)
                except BaseException as e:
                    await self._drop(held, e)
                    if not (kept and isinstance(e, Exception) and _connection_lost(e)):
                        raise
                    kept, held = False, await self._checkout()
                    continue
                break
            if self._closed:
                await held.conn.close()
            else:
                self._idle.append(held)
        return from_row(tenant_id, customer, tuple(row))

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for held in idle:
            with contextlib.suppress(Exception):
                await held.conn.close()

    async def _checkout(self) -> _Held:
        conn = await self.engine.connect()
        try:
            raw = await conn.get_raw_connection()
        except BaseException:
            await conn.close()
            raise
        return _Held(conn, raw.driver_connection)

    @staticmethod
    async def _drop(held: _Held, error: BaseException) -> None:
        with contextlib.suppress(Exception):
            await held.conn.invalidate(error if isinstance(error, Exception) else None)
        with contextlib.suppress(Exception):
            await held.conn.close()


def _connection_lost(e: Exception) -> bool:
    """Whether ``e`` says the connection is gone (not that the statement failed): a socket
    error, asyncpg's "connection is closed", SQLSTATE class 08 (connection exception) or
    57P01-57P03 (the server shut down or is starting)."""
    if isinstance(e, OSError):
        return True
    sqlstate = getattr(e, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03")
    return isinstance(e, asyncpg.InterfaceError) and "closed" in str(e)


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
    """Rows of ``model`` from PostgreSQL's JSON of them: quantities exact (Decimal), times
    parsed, configurations as the JSONB column reads them.

    Read-only values, made without the ORM's instance state (``model(**values)`` costs
    about 16 µs a row, this under 1 µs, on the check's hot path): every column's attribute
    is set, so reading any reads the value; writing one, or adding the row to a session,
    fails (a snapshot is never written back)."""
    if text_ is None:
        return []
    columns = _columns(model)
    rows = []
    for item in json.loads(text_, parse_float=Decimal):
        row = model.__new__(model)
        values = row.__dict__
        for attr, name, convert in columns:
            value = item.get(name)
            values[attr] = value if value is None or convert is None else convert(value)
        rows.append(row)
    return rows


@functools.cache
def _columns(model: Any) -> tuple[tuple[str, str, Callable[[Any], Any] | None], ...]:
    """(attribute, column name, how its JSON value is read; None: as it is) of every column
    of ``model``."""
    return tuple(
        (prop.key, prop.columns[0].name, _converter(prop.columns[0].name))
        for prop in sa_inspect(model).column_attrs
    )


_QUANTITIES = frozenset({"limit", "units", "usage"})


def _converter(name: str) -> Callable[[Any], Any] | None:
    """How a column's non-null JSON value is read: times parsed, quantities exact, a
    configuration as the JSONB column reads it (floats)."""
    if name in _TIMES:
        return datetime.fromisoformat
    if name in _QUANTITIES:
        return Decimal
    if name == "config":
        return _plain_json
    return None


def _plain_json(value: Any) -> Any:
    """JSON as ``json.loads`` reads it (floats), from a parse that kept decimals."""
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    return float(value) if isinstance(value, Decimal) else value
