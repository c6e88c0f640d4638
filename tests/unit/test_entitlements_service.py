"""service.evaluate by hand: where a feature comes from (override > plans, the largest limit
> grants; grants add units), metered periods (rolling with the subscription, the calendar
month without one), the standing that follows unpaid invoices, and the events a change
announces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from storage.entitlements import (
    ConfigRow,
    FeatureRow,
    GrantRow,
    OverrideRow,
    PlanGrantRow,
    Snapshot,
    SubscriptionRow,
    UnpaidRow,
    UsageRow,
)
from workers.entitlements import evaluate
from workers.entitlements.service import NEVER, Announced, Cause, access_events, held

T = "acme"
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
FEATURES = [
    FeatureRow(tenant_id=T, key="api", name="API", kind="metered", meter="calls"),
    FeatureRow(tenant_id=T, key="sso", name="SSO", kind="boolean", meter=None),
    FeatureRow(tenant_id=T, key="tier", name="Tier", kind="config", meter=None),
]


def sub(plan: str, start: datetime, end: datetime, id: str = "s1") -> SubscriptionRow:
    return SubscriptionRow(
        tenant_id=T, subscription_id=id, customer="alice", plan=plan, interval="month",
        status="active", current_period_start=start, current_period_end=end,
    )  # fmt: skip


def plan(p: str, feature: str, limit: int | None = None, **kw: Any) -> PlanGrantRow:
    lim = Decimal(limit) if limit is not None else None
    return PlanGrantRow(tenant_id=T, plan=p, feature=feature, limit=lim,
                        limit_mode=kw.get("mode", "hard"), config=kw.get("config"))  # fmt: skip


def usage(start: datetime, end: datetime, value: str) -> UsageRow:
    return UsageRow(tenant_id=T, customer="alice", meter="calls", period_start=start,
                    period_end=end, usage=Decimal(value), updated_at=NOW)  # fmt: skip


def snap(**kw: Any) -> Snapshot:
    fields: dict[str, Any] = {
        "subscriptions": [], "plan_grants": [], "overrides": [], "grants": [], "usage": [],
        "unpaid": [], "config": None,
    }  # fmt: skip
    fields.update(kw)
    return Snapshot(tenant_id=T, customer="alice", features=FEATURES, **fields)


def view(s: Snapshot, feature: str, now: datetime = NOW) -> Any:
    return next(e for e in evaluate(s, now).entitlements if e.feature == feature)


MARCH = (datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 4, 5, tzinfo=UTC))


def test_nothing_without_a_plan_override_or_grant() -> None:
    v = view(snap(), "sso")
    assert (v.has_access, v.reason, v.source) == (False, "not_subscribed", None)


def test_the_largest_plan_limit_wins_and_grants_add_their_units() -> None:
    subs = [sub("basic", *MARCH), sub("addon", *MARCH, id="s2")]
    grants = [plan("basic", "api", 100), plan("addon", "api", 250)]
    g = GrantRow(tenant_id=T, id="g1", customer="alice", feature="api", units=Decimal(50),
                 starts_at=NOW - timedelta(days=1), expires_at=None)  # fmt: skip
    s = snap(subscriptions=subs, plan_grants=grants, grants=[g], usage=[usage(*MARCH, "120")])
    v = view(s, "api")
    # 250 + 50 = 300 allowed; 120 used: 180 remain
    assert (v.source, v.limit, v.usage, v.remaining) == ("plan", 300, 120, 180)
    assert (v.period_start, v.resets_at) == MARCH
    # an unlimited plan beats any limit
    unlimited = snap(subscriptions=subs, plan_grants=[*grants[:1], plan("addon", "api")])
    assert view(unlimited, "api").limit is None


def test_an_override_replaces_the_plans_and_disabled_denies() -> None:
    base = {"subscriptions": [sub("basic", *MARCH)], "plan_grants": [plan("basic", "api", 100),
            plan("basic", "sso")]}  # fmt: skip
    lower = OverrideRow(tenant_id=T, customer="alice", feature="api", enabled=True, config=None,
                        limit=Decimal(10), limit_mode="hard")  # fmt: skip
    off = OverrideRow(tenant_id=T, customer="alice", feature="sso", enabled=False, config=None,
                      limit=None, limit_mode="hard")  # fmt: skip
    s = snap(**base, overrides=[lower, off], usage=[usage(*MARCH, "10")])
    api = view(s, "api")
    assert (api.source, api.limit, api.has_access, api.reason) == (
        "override", 10, False, "limit_reached"
    )  # fmt: skip
    sso = view(s, "sso")
    assert (sso.has_access, sso.reason, sso.source) == (False, "not_subscribed", None)


def test_a_soft_limit_reports_and_keeps_access() -> None:
    soft = [plan("basic", "api", 5, mode="soft")]
    s = snap(subscriptions=[sub("basic", *MARCH)], plan_grants=soft, usage=[usage(*MARCH, "7")])
    v = view(s, "api")
    assert (v.has_access, v.limit_reached, v.remaining, v.limit_mode) == (True, True, 0, "soft")


def test_grants_in_force_only_and_alone_their_units_are_the_limit() -> None:
    later = GrantRow(tenant_id=T, id="g2", customer="alice", feature="api", units=Decimal(5),
                     starts_at=NOW + timedelta(hours=1), expires_at=None)  # fmt: skip
    hour = timedelta(hours=1)
    now = GrantRow(tenant_id=T, id="g1", customer="alice", feature="api", units=Decimal(20),
                   starts_at=NOW - hour, expires_at=NOW + hour)  # fmt: skip
    march = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    s = snap(grants=[later, now], usage=[usage(*march, "8")])
    v = view(s, "api")
    # no subscription: the calendar month; only g1 is in force: 20 allowed, 8 used
    assert (v.source, v.limit, v.remaining, v.period_start) == ("grant", 20, 12, march[0])
    gone = view(s, "api", NOW + timedelta(hours=2))
    assert (gone.limit, gone.remaining) == (5, 0)  # g2 alone now: 5 allowed, 8 used
    assert gone.reason == "limit_reached"


def test_the_period_rolls_on_when_the_reported_one_ended() -> None:
    feb = (datetime(2026, 2, 5, tzinfo=UTC), datetime(2026, 3, 5, tzinfo=UTC))
    s = snap(subscriptions=[sub("basic", *feb)], plan_grants=[plan("basic", "api", 10)],
             usage=[usage(*feb, "10")])  # fmt: skip
    v = view(s, "api")
    # February's 10 calls are not March's: the limit is not reached, resets on April 5th
    assert (v.usage, v.limit_reached, v.has_access) == (0, False, True)
    assert (v.period_start, v.resets_at) == MARCH


def test_the_standing_follows_unpaid_invoices() -> None:
    base = {"subscriptions": [sub("basic", *MARCH)], "plan_grants": [plan("basic", "sso")]}
    failed = NOW - timedelta(hours=10)
    unpaid = UnpaidRow(tenant_id=T, invoice_id="in1", customer="alice", failed_at=failed,
                       exhausted=False)  # fmt: skip
    config = ConfigRow(tenant_id=T, payment_grace_hours=24, token_ttl_seconds=900,
                       rate_limit_feature=None)  # fmt: skip
    s = snap(**base, unpaid=[unpaid], config=config)
    a = evaluate(s, NOW)
    assert (a.status, a.grace_until) == ("past_due", failed + timedelta(hours=24))
    assert view(s, "sso").has_access
    late = evaluate(s, failed + timedelta(hours=24))
    assert late.status == "payment_pending" and late.entitlements[1].reason == "payment_pending"
    gone = UnpaidRow(tenant_id=T, invoice_id="in1", customer="alice", failed_at=failed,
                     exhausted=True)  # fmt: skip
    assert view(snap(**base, unpaid=[gone]), "sso").reason == "suspended"


def test_announcements_are_the_difference_with_what_was_announced() -> None:
    base = {"subscriptions": [sub("basic", *MARCH)], "plan_grants": [plan("basic", "sso")]}
    now_has = evaluate(snap(**base), NOW)
    first = access_events(T, now_has, NEVER, Cause("subscribed"), NOW)
    assert [(e.type, e.data.features, e.data.reason) for e in first] == [  # type: ignore[attr-defined]
        ("entitlement.granted", ["sso"], "subscribed")
    ]
    assert access_events(T, now_has, held(now_has), Cause(), NOW) == []
    unpaid = UnpaidRow(tenant_id=T, invoice_id="in1", customer="alice",
                       failed_at=NOW - timedelta(days=5), exhausted=False)  # fmt: skip
    pending = evaluate(snap(**base, unpaid=[unpaid]), NOW)
    out = access_events(T, pending, held(now_has), Cause(invoice_id="in1"), NOW)
    assert [(e.type, e.data.reason, e.data.invoice_id) for e in out] == [  # type: ignore[attr-defined]
        ("entitlement.suspended", "payment_pending", "in1")
    ]
    back = access_events(
        T, now_has, Announced("payment_pending", ("sso",)), Cause("x", "x", "voided"), NOW
    )
    assert [(e.type, e.data.reason) for e in back] == [("entitlement.restored", "voided")]  # type: ignore[attr-defined]
    lost = access_events(
        T, evaluate(snap(), NOW), held(now_has), Cause(revoked="subscription_ended"), NOW
    )
    assert [(e.type, e.data.features, e.data.reason) for e in lost] == [  # type: ignore[attr-defined]
        ("entitlement.revoked", ["sso"], "subscription_ended")
    ]
