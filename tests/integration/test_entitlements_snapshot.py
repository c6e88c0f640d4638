"""The check's one-statement snapshot reads exactly what the worker's set-based
``snapshots`` reads: every kind of row, exact quantities, times and configurations, and
nothing of another customer or tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import insert

from storage.entitlements import (
    ConfigRow,
    EntitlementRepository,
    FeatureRow,
    GrantRow,
    OverrideRow,
    PlanGrantRow,
    Snapshot,
    SubscriptionRow,
    UnpaidRow,
    UsageRow,
)
from tests.conftest import TenantKey, make_tenant
from tests.integration.receipts_support import with_secrets
from tests.integration.support import Sessions
from workers import entitlements
from workers.runtime import Tx
from workers.settings import Settings

NOW = datetime(2026, 12, 4, 13, 30, tzinfo=UTC)
START = datetime(2026, 12, 1, tzinfo=UTC)
END = datetime(2027, 1, 1, tzinfo=UTC)


def _rows(tenant: str, customer: str) -> list[tuple[Any, list[dict[str, Any]]]]:
    t, c = tenant, customer
    return [
        (
            FeatureRow,
            [
                {"tenant_id": t, "key": "sso", "name": "SSO", "kind": "boolean", "meter": None},
                {"tenant_id": t, "key": "tier", "name": "Tier", "kind": "config", "meter": None},
                {
                    "tenant_id": t,
                    "key": "calls",
                    "name": "Calls",
                    "kind": "metered",
                    "meter": "api",
                },
            ],
        ),
        (
            SubscriptionRow,
            [
                {
                    "tenant_id": t,
                    "subscription_id": f"sub-{c}",
                    "customer": c,
                    "plan": "pro",
                    "interval": "month",
                    "status": "active",
                    "current_period_start": START,
                    "current_period_end": END,
                },
                {
                    "tenant_id": t,
                    "subscription_id": f"old-{c}",
                    "customer": c,
                    "plan": "basic",
                    "interval": "month",
                    "status": "ended",
                    "current_period_start": START,
                    "current_period_end": END,
                },
            ],
        ),
        (
            PlanGrantRow,
            [
                {
                    "tenant_id": t,
                    "plan": "pro",
                    "feature": "calls",
                    "config": None,
                    "limit": Decimal("10000.5"),
                    "limit_mode": "hard",
                },
                {
                    "tenant_id": t,
                    "plan": "pro",
                    "feature": "tier",
                    "config": {"tier": 3, "burst": 1.5, "names": ["a", {"b": None}]},
                    "limit": None,
                    "limit_mode": "hard",
                },
                {
                    "tenant_id": t,
                    "plan": "basic",
                    "feature": "sso",
                    "config": None,
                    "limit": None,
                    "limit_mode": "hard",
                },
            ],
        ),
        (
            OverrideRow,
            [
                {
                    "tenant_id": t,
                    "customer": c,
                    "feature": "sso",
                    "enabled": False,
                    "config": None,
                    "limit": None,
                    "limit_mode": "soft",
                }
            ],
        ),
        (
            GrantRow,
            [
                {
                    "tenant_id": t,
                    "id": f"g1-{c}",
                    "customer": c,
                    "feature": "calls",
                    "units": Decimal("0.000000000001"),
                    "starts_at": START,
                    "expires_at": None,
                },
                {
                    "tenant_id": t,
                    "id": f"g2-{c}",
                    "customer": c,
                    "feature": "calls",
                    "units": Decimal(7),
                    "starts_at": START,
                    "expires_at": NOW - timedelta(hours=1),
                },
            ],
        ),
        (
            UsageRow,
            [
                {
                    "tenant_id": t,
                    "customer": c,
                    "meter": "api",
                    "period_start": START,
                    "period_end": END,
                    "usage": Decimal("123456789012345.123456789012"),
                    "updated_at": NOW,
                },
                {
                    "tenant_id": t,
                    "customer": c,
                    "meter": "api",
                    "period_start": START - timedelta(days=30),
                    "period_end": START,
                    "usage": Decimal(5),
                    "updated_at": NOW,
                },
            ],
        ),
        (
            UnpaidRow,
            [
                {
                    "tenant_id": t,
                    "invoice_id": f"inv-{c}",
                    "customer": c,
                    "failed_at": NOW - timedelta(hours=2),
                    "exhausted": False,
                }
            ],
        ),
    ]


def _plain(snap: Snapshot) -> dict[str, Any]:
    def cols(row: Any) -> dict[str, Any]:
        return {k: getattr(row, k) for k in row.__table__.columns.keys()}  # noqa: SIM118  # names

    def rows(items: Any) -> list[dict[str, Any]]:
        return sorted((cols(r) for r in items), key=repr)

    return {
        "features": rows(snap.features),
        "subscriptions": rows(snap.subscriptions),
        "plan_grants": rows(snap.plan_grants),
        "overrides": rows(snap.overrides),
        "grants": rows(snap.grants),
        "usage": rows(snap.usage),
        "unpaid": rows(snap.unpaid),
        "config": cols(snap.config) if snap.config else None,
    }


async def test_one_statement_reads_what_the_set_based_read_reads(
    sessions: Sessions, tenant: TenantKey
) -> None:
    other = await make_tenant(sessions, "other-tenant")
    async with sessions() as db, db.begin():
        for t, c in ((tenant.tenant_id, "c1"), (tenant.tenant_id, "c2"), (other.tenant_id, "c1")):
            for model, values in _rows(t, c):
                if model not in (FeatureRow, PlanGrantRow) or c == "c1":  # the tenant's
                    await db.execute(insert(model).values(values))
        await db.execute(
            insert(ConfigRow).values(
                tenant_id=tenant.tenant_id,
                payment_grace_hours=5,
                token_ttl_seconds=60,
                rate_limit_feature="tier",
            )
        )
    async with sessions() as db, db.begin():
        repo = EntitlementRepository(db)
        for feature in (None, "calls", "tier", "nope"):
            one = await repo.snapshot(tenant.tenant_id, "c1", NOW, feature=feature)
            many = await repo.snapshots([(tenant.tenant_id, "c1")], NOW, feature=feature)
            assert _plain(one) == _plain(many[(tenant.tenant_id, "c1")]), feature
        whole = _plain(await repo.snapshot(tenant.tenant_id, "c1", NOW))
    # what a user would see wrong if the read were off: by hand
    assert [f["key"] for f in whole["features"]] == ["calls", "sso", "tier"]
    assert [s["plan"] for s in whole["subscriptions"]] == ["pro"]  # the ended one left out
    assert {(g["feature"], g["limit"]) for g in whole["plan_grants"]} == {
        ("calls", Decimal("10000.5")),
        ("tier", None),
    }  # basic's grants are of an ended subscription
    tier = next(g for g in whole["plan_grants"] if g["feature"] == "tier")
    assert tier["config"] == {"tier": 3, "burst": 1.5, "names": ["a", {"b": None}]}
    assert type(tier["config"]["tier"]) is int
    assert [g["units"] for g in whole["grants"]] == [Decimal("0.000000000001")]  # g2 expired
    assert [u["usage"] for u in whole["usage"]] == [Decimal("123456789012345.123456789012")]
    assert whole["usage"][0]["period_start"] == START
    assert whole["unpaid"][0]["failed_at"] == NOW - timedelta(hours=2)
    assert whole["config"]["payment_grace_hours"] == 5


async def test_a_new_signing_key_is_published_before_it_signs(
    sessions: Sessions, settings: Settings
) -> None:
    """Gateways may cache /.well-known/jwks.json for five minutes: a rotated-in key is in
    it six minutes before the first token it signs, and the key it replaces stays published
    a day after it stopped signing."""
    s = with_secrets(settings)
    lead, kept = entitlements.SIGNS_AFTER, entitlements.PUBLISHED_AFTER_RETIRED
    t0 = datetime(2026, 12, 1, tzinfo=UTC)

    async def at(now: datetime) -> tuple[str | None, list[str]]:
        async with sessions() as db, db.begin():
            repo = EntitlementRepository(db)
            key = await repo.signing_key(now, lead)
            return key.kid if key else None, [k.kid for k in await repo.published_keys(now - kept)]

    async def rotate(now: datetime) -> str:
        async with sessions() as db, db.begin():
            kid = await entitlements.rotate(Tx(db, "tests"), s, now)
        assert kid is not None
        return kid

    assert await at(t0) == (None, [])
    first = await rotate(t0)
    assert await at(t0) == (first, [first])  # the first key signs at once: none before it
    second = await rotate(t0 + timedelta(days=30))
    just_after = t0 + timedelta(days=30, minutes=1)
    assert await at(just_after) == (first, [first, second])  # published, not signing yet
    switched = t0 + timedelta(days=30) + lead
    assert await at(switched) == (second, [first, second])
    assert await at(switched + kept - timedelta(seconds=1)) == (second, [first, second])
    assert await at(switched + kept + timedelta(seconds=1)) == (second, [second])
