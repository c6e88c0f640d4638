"""Checks answered from memory (storage/entitlements/cache.py): a real ingress (uvicorn) and
PostgreSQL with migration 0032's triggers. A customer checked again is answered without the
statement, the same; a row changed behind the cache's back — straight SQL, as any writer
would — shows in the next checks as soon as PostgreSQL's notification arrives (customer
and tenant tables, inserts, updates, deletes, truncation); one tenant's change never drops
or serves another's; a notification during a read keeps its result out; losing the
listener drops everything and reads until it listens again; one tenant holds at most its
share."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from storage.db import create_engine
from storage.entitlements.cache import SnapshotCache
from storage.entitlements.snapshot import NOTIFY_CHANNEL, NOTIFY_FUNCTION, Snapshot, SnapshotReader
from tests.conftest import TenantKey, make_tenant
from tests.integration.support import Sessions
from tests.integration.test_entitlements_api import serving
from workers.devstack import wait_for
from workers.ingress.app import create_app
from workers.ingress.entitlement_checks import snapshots
from workers.settings import Settings

NOW = datetime.now(UTC).replace(microsecond=0)
START, END = NOW - timedelta(days=1), NOW + timedelta(days=29)


async def sql(sessions: Sessions, statement: str, **params: Any) -> None:
    """One statement in a transaction of its own, committed (a writer behind the cache's back)."""
    async with sessions() as db, db.begin():
        await db.execute(text(statement), params)


async def seed(sessions: Sessions, tenant: str, customers: list[str], limit: int = 100) -> None:
    """Features ``sso`` (boolean) and ``api`` (metered, meter ``calls``); plan ``pro`` gives
    both, ``api`` up to ``limit`` (hard); every customer subscribed to it since yesterday,
    40 calls used this period."""
    await sql(
        sessions,
        "INSERT INTO entitlement_features (tenant_id, key, name, kind, meter) VALUES "
        "(:t, 'sso', 'Single sign-on', 'boolean', NULL), (:t, 'api', 'API', 'metered', 'calls')",
        t=tenant,
    )
    await sql(
        sessions,
        'INSERT INTO entitlement_plan_grants (tenant_id, plan, feature, "limit", limit_mode) '
        "VALUES (:t, 'pro', 'sso', NULL, 'hard'), (:t, 'pro', 'api', :limit, 'hard')",
        t=tenant,
        limit=limit,
    )
    for c in customers:
        await add_customer(sessions, tenant, c)
        await sql(
            sessions,
            "INSERT INTO entitlement_subscriptions (tenant_id, subscription_id, customer, plan, "
            "interval, status, current_period_start, current_period_end) "
            "VALUES (:t, :s, :c, 'pro', 'month', 'active', :start, :end)",
            t=tenant,
            s=f"sub-{c}",
            c=c,
            start=START,
            end=END,
        )
        await sql(
            sessions,
            "INSERT INTO entitlement_usage (tenant_id, customer, meter, period_start, "
            "period_end, usage, updated_at) VALUES (:t, :c, 'calls', :start, :end, 40, now())",
            t=tenant,
            c=c,
            start=START,
            end=END,
        )


async def add_customer(sessions: Sessions, tenant: str, customer: str) -> None:
    await sql(
        sessions,
        "INSERT INTO customers (id, tenant_id, external_id, name, currency, tax_exempt, "
        "net_terms_days) VALUES (gen_random_uuid()::text, :t, :c, :c, 'USD', false, 30)",
        t=tenant,
        c=customer,
    )


@contextlib.asynccontextmanager
async def ingress(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        yield app, http


class Checks:
    """One tenant's checks through the ingress, and the process's cache."""

    def __init__(self, app: FastAPI, http: httpx.AsyncClient, key: TenantKey) -> None:
        self.app, self.http, self.key = app, http, key

    @property
    def cache(self) -> SnapshotCache:
        return snapshots(self.app.state)

    @property
    def statements(self) -> int:
        return self.cache.reader.statements

    async def raw(self, customer: str, feature: str | None = None) -> httpx.Response:
        path = f"/v1/customers/{customer}/entitlements" + (f"/{feature}" if feature else "")
        return await self.http.get(path, headers={"Authorization": f"Bearer {self.key.api_key}"})

    async def get(self, customer: str, feature: str | None = None) -> Any:
        r = await self.raw(customer, feature)
        assert r.status_code == 200, r.text
        return r.json()

    async def listening(self) -> None:
        """The cache listens (a check starts it, in the background)."""
        await self.raw("nobody")
        await wait_for(lambda: self.cache.listening, timeout_s=10)

    async def cached(self, customer: str) -> None:
        """``customer``'s snapshot is kept: checked once more, the statement did not run."""
        await self.get(customer)
        before = self.statements
        await self.get(customer)
        assert self.statements == before
        assert (self.key.tenant_id, customer) in self.cache

    async def until(self, customer: str, feature: str, **expected: Any) -> dict[str, Any]:
        """Poll the check until it answers ``expected`` (the notification's way is short)."""

        async def seen() -> dict[str, Any] | None:
            view: dict[str, Any] = await self.get(customer, feature)
            return view if all(view[k] == v for k, v in expected.items()) else None

        found: dict[str, Any] = await wait_for(seen, timeout_s=10)
        return found


@pytest.fixture
async def checks(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> AsyncIterator[Checks]:
    await seed(sessions, tenant.tenant_id, ["alice", "bob"])
    async with ingress(settings) as (app, http):
        c = Checks(app, http, tenant)
        await c.listening()
        yield c


async def test_a_second_check_is_answered_from_memory_with_the_same_bytes(
    checks: Checks,
) -> None:
    paths: list[tuple[str, str | None]] = [("alice", None), ("alice", "sso"), ("alice", "api")]
    first = [(await checks.raw(c, f)).content for c, f in paths]
    before = checks.statements
    again = [(await checks.raw(c, f)).content for c, f in paths for _ in range(3)]
    assert checks.statements == before  # not one statement: all from memory
    assert again == [body for body in first for _ in range(3)]
    api = json.loads(first[2])  # what the user reads, by hand: 100 - 40 = 60 left
    assert (api["has_access"], api["usage"], api["limit"], api["remaining"]) == (
        True,
        "40",
        "100",
        "60",
    )
    # an unknown customer is never kept: every check of it reads (and answers 404)
    for _ in range(2):
        before = checks.statements
        assert (await checks.raw("mallory")).status_code == 404
        assert checks.statements == before + 1
    assert ("acme", "mallory") not in checks.cache
    # an unknown feature of a kept customer: 404 from memory
    before = checks.statements
    assert (await checks.raw("alice", "nope")).status_code == 404
    assert checks.statements == before


async def test_a_row_changed_behind_the_caches_back_shows_in_the_next_checks(
    checks: Checks, sessions: Sessions
) -> None:
    t = checks.key.tenant_id
    # a customer's row, updated: the 60 left are used up (40 + 65 = 105 >= 100)
    await checks.cached("alice")
    await sql(sessions, "UPDATE entitlement_usage SET usage = 105 WHERE customer = 'alice'")
    api = await checks.until("alice", "api", usage="105")
    assert (api["has_access"], api["reason"], api["remaining"]) == (False, "limit_reached", "0")
    # a customer's row, inserted: an override turning SSO off
    await checks.cached("alice")
    await sql(
        sessions,
        "INSERT INTO entitlement_overrides (tenant_id, customer, feature, enabled, limit_mode) "
        "VALUES (:t, 'alice', 'sso', false, 'hard')",
        t=t,
    )
    sso = await checks.until("alice", "sso", has_access=False)
    assert (sso["reason"], sso["source"]) == ("not_subscribed", None)
    # ... and deleted: back to the plan's
    await checks.cached("alice")
    await sql(sessions, "DELETE FROM entitlement_overrides WHERE customer = 'alice'")
    sso = await checks.until("alice", "sso", has_access=True)
    assert sso["source"] == "plan"
    # a tenant's rows: the plan's limit raised (105 of 1000: 895 left), a feature renamed
    await checks.cached("alice")
    await checks.cached("bob")
    await sql(sessions, "UPDATE entitlement_plan_grants SET \"limit\" = 1000 WHERE feature = 'api'")
    api = await checks.until("alice", "api", limit="1000")
    assert (api["has_access"], api["remaining"]) == (True, "895")
    assert (await checks.get("bob", "api"))["remaining"] == "960"  # 1000 - 40
    await checks.cached("alice")
    await sql(sessions, "UPDATE entitlement_features SET name = 'SSO' WHERE key = 'sso'")
    await checks.until("alice", "sso", name="SSO")
    # a table truncated: everything dropped
    await checks.cached("alice")
    await checks.cached("bob")
    await sql(sessions, "TRUNCATE entitlement_unpaid")
    await wait_for(lambda: len(checks.cache) == 0, timeout_s=10)
    # the customer itself deleted: 404
    await checks.cached("bob")
    await sql(sessions, "DELETE FROM customers WHERE external_id = 'bob'")

    async def gone() -> bool:
        return (await checks.raw("bob", "sso")).status_code == 404

    await wait_for(gone, timeout_s=10)


async def test_a_customers_name_changes_nothing_a_check_reads_and_drops_nothing(
    checks: Checks, sessions: Sessions
) -> None:
    """Only a customer's existence is read: renaming it is not announced. Notifications
    arrive in commit order, so once the change committed after it has dropped bob's entry,
    alice's rename would have dropped hers before."""
    await checks.cached("alice")
    await checks.cached("bob")
    await sql(sessions, "UPDATE customers SET name = 'Alice Ltd' WHERE external_id = 'alice'")
    await sql(sessions, "UPDATE entitlement_usage SET usage = 41 WHERE customer = 'bob'")
    await wait_for(lambda: ("acme", "bob") not in checks.cache, timeout_s=10)
    assert ("acme", "alice") in checks.cache


async def test_one_tenants_change_neither_drops_nor_serves_anothers(
    checks: Checks, sessions: Sessions
) -> None:
    other = await make_tenant(sessions, "other")
    await seed(sessions, other.tenant_id, ["alice"], limit=50)  # the same customer id
    them = Checks(checks.app, checks.http, other)
    ours = await checks.get("alice", "api")
    theirs = await them.get("alice", "api")
    assert (ours["limit"], ours["remaining"]) == ("100", "60")
    assert (theirs["limit"], theirs["remaining"]) == ("50", "10")  # each its own
    await checks.cached("alice")
    await them.cached("alice")
    # our customer's usage and our tenant's features change; theirs stay kept, unchanged
    await sql(
        sessions,
        "UPDATE entitlement_usage SET usage = 70 WHERE tenant_id = :t AND customer = 'alice'",
        t=checks.key.tenant_id,
    )
    await checks.until("alice", "api", remaining="30")
    await sql(
        sessions,
        "UPDATE entitlement_features SET name = 'Calls' WHERE tenant_id = :t AND key = 'api'",
        t=checks.key.tenant_id,
    )
    await checks.until("alice", "api", name="Calls")
    assert ("other", "alice") in checks.cache
    before = checks.statements
    assert await them.get("alice", "api") == theirs
    assert checks.statements == before


async def test_a_notification_during_a_read_keeps_its_result_out_of_the_cache(
    database_url: str, sessions: Sessions, tenant: TenantKey
) -> None:
    await seed(sessions, tenant.tenant_id, ["alice"])
    engine = create_engine(database_url, pool_size=2)
    reader = SnapshotReader(engine, keep=2)
    cache = SnapshotCache(reader)
    real = reader.read
    read_done, release = asyncio.Event(), asyncio.Event()
    gated = False

    async def gate(*args: Any, **kwargs: Any) -> Snapshot:
        snap = await real(*args, **kwargs)
        if gated:  # the statement has answered; the result is on its way back
            read_done.set()
            await release.wait()
        return snap

    reader.read = gate  # type: ignore[method-assign]
    key = (tenant.tenant_id, "alice")
    try:
        await cache.read(*key, datetime.now(UTC))  # starts listening
        await wait_for(lambda: cache.listening, timeout_s=10)
        gated = True
        task = asyncio.create_task(cache.read(*key, datetime.now(UTC)))
        await read_done.wait()
        generation = cache.generation
        await sql(sessions, "UPDATE entitlement_usage SET usage = 99 WHERE customer = 'alice'")
        await wait_for(lambda: cache.generation > generation, timeout_s=10)
        release.set()
        stale = await task
        assert [u.usage for u in stale.usage] == [40]  # answered as read ...
        assert key not in cache  # ... but not kept: the change arrived meanwhile
        gated = False
        before = reader.statements
        fresh = await cache.read(*key, datetime.now(UTC))
        assert reader.statements == before + 1
        assert [u.usage for u in fresh.usage] == [99]
        assert key in cache  # a quiet read is kept
    finally:
        await cache.close()
        await engine.dispose()


async def test_without_its_listener_the_cache_reads_and_keeps_nothing_until_it_listens_again(
    checks: Checks, sessions: Sessions
) -> None:
    await checks.cached("alice")
    # as a restart or a network cut would: the listener and the reader's connections go
    async with sessions() as db, db.begin():
        dropped = (
            await db.execute(
                text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                    "FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                    "AND datname = current_database() "
                    "AND (query LIKE 'LISTEN %' OR query LIKE '%FROM entitlement_subscriptions%')"
                )
            )
        ).scalar_one()
    assert dropped >= 2
    await wait_for(lambda: not checks.cache.listening, timeout_s=10)
    assert len(checks.cache) == 0
    # a change now is seen by the very next check: nothing kept, every check reads
    await sql(sessions, "UPDATE entitlement_usage SET usage = 100 WHERE customer = 'alice'")
    api = await checks.get("alice", "api")
    assert (api["usage"], api["has_access"], api["reason"]) == ("100", False, "limit_reached")

    # a later check (at most one a second) starts listening again, in the background:
    # then kept as before
    async def listening_again() -> bool:
        assert await checks.get("alice", "api") == api
        return checks.cache.listening

    await wait_for(listening_again, timeout_s=10)
    await checks.cached("alice")
    assert await checks.get("alice", "api") == api


async def test_one_tenant_holds_at_most_its_share(
    database_url: str, sessions: Sessions, tenant: TenantKey
) -> None:
    other = await make_tenant(sessions, "other")
    ours = [f"c{i}" for i in range(5)]
    await seed(sessions, tenant.tenant_id, ours)
    await seed(sessions, other.tenant_id, ["x", "y"])
    engine = create_engine(database_url, pool_size=2)
    # 8 customers in all, a quarter each: 2 per tenant
    cache = SnapshotCache(SnapshotReader(engine, keep=2), max_entries=8, tenant_share=4)
    try:
        await cache.read("other", "x", datetime.now(UTC))
        await wait_for(lambda: cache.listening, timeout_s=10)
        for c in ("x", "y"):
            await cache.read("other", c, datetime.now(UTC))
        for c in ours:
            await cache.read(tenant.tenant_id, c, datetime.now(UTC))
        assert cache.held(tenant.tenant_id)[0] == 2  # the last two checked
        assert (tenant.tenant_id, "c4") in cache and (tenant.tenant_id, "c3") in cache
        assert cache.held("other")[0] == 2  # untouched by our churn
        assert len(cache) == 4
        # rows too: each snapshot here is 1 + 2 features + 1 subscription + 2 plan grants
        # + 1 usage = 7 rows; a tenant's share of 120 / 4 = 30 rows holds 4 customers
        small = SnapshotCache(SnapshotReader(engine, keep=1), max_rows=120, tenant_share=4)
        await small.read("other", "x", datetime.now(UTC))
        await wait_for(lambda: small.listening, timeout_s=10)
        for c in ours:
            await small.read(tenant.tenant_id, c, datetime.now(UTC))
        assert small.held(tenant.tenant_id) == (4, 28)
        await small.close()
    finally:
        await cache.close()
        await engine.dispose()


async def test_the_migration_announces_on_the_channel_the_cache_listens_to(
    sessions: Sessions,
) -> None:
    """Migration 0032 repeats the names (a migration imports no code): they agree."""
    async with sessions() as db:
        source = (
            await db.execute(
                text("SELECT prosrc FROM pg_proc WHERE proname = :f"), {"f": NOTIFY_FUNCTION}
            )
        ).scalar_one()
    assert f"pg_notify('{NOTIFY_CHANNEL}'" in source
