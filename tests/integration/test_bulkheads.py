"""Bulkheads (ADR 0044): a job step that fails on one tenant's data quarantines that item and
carries on with everyone else's. Real broker, real PostgreSQL, real workers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, text

from schemas import topics
from storage.quarantine import QuarantineRepository, QuarantineRow
from tests.conftest import TenantKey, make_tenant
from tests.integration import test_invoicing
from tests.integration.http import Client
from tests.integration.support import Sessions, read_topic, wait_outbox_drained
from tests.integration.test_invoicing import (
    ALICE,
    HOUR,
    METERS,
    NOV,
    OCT,
    PRO,
    Stack,
    usage_event,
)
from tests.integration.test_ops_cli import billstream
from workers.invoicing.jobs import Billing
from workers.runtime import Item, Jobs, Tx
from workers.settings import Settings

pytestmark = pytest.mark.slow

billing = test_invoicing.billing  # the fixtures: acme with alice, the meters and plan "pro"
billing_settings = test_invoicing.billing_settings


async def _quarantined(sessions: Sessions) -> list[QuarantineRow]:
    async with sessions() as session:
        return list(await session.scalars(select(QuarantineRow)))


async def _other_tenant(st: Stack, sessions: Sessions) -> Stack:
    globex = Stack(st.settings, Client(st.http, await make_tenant(sessions, "globex")), st.http)
    for meter in METERS:
        await globex.api.ok("POST", "/v1/meters", meter)
    await globex.api.ok("POST", "/v1/customers", ALICE)
    await globex.api.ok("POST", "/v1/plans", PRO)
    await globex.api.ok(
        "POST", "/v1/subscriptions", {"customer": "alice", "plan": "pro", "start": OCT.isoformat()}
    )
    return globex


async def test_a_tenants_unbillable_usage_quarantines_its_subscription_not_everyones_billing(
    billing: Stack, billing_settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    """Finding 1: usage whose invoice line cannot be stored (1e30 tokens at 0.000125 USD is
    1.25e28 cents, beyond BIGINT) used to fail every billing tick for every tenant, and the
    attacker's requested run stayed pending forever, ahead of everyone else's."""
    acme = billing
    globex = await _other_tenant(acme, sessions)
    await acme.api.ok(
        "POST", "/v1/subscriptions", {"customer": "alice", "plan": "pro", "start": OCT.isoformat()}
    )
    for st in (acme, globex):
        await st.send_usage([usage_event("t1", "alice", OCT + HOUR, "llm.completion", tokens=9)])
        await st.wait_usage("tokens", "alice", OCT, NOV, Decimal(9))
    # a value from before the door refused such numbers (or a bug): metered, not billable
    async with sessions() as session, session.begin():
        await session.execute(
            text("UPDATE usage_hourly SET sum = 1e30 WHERE tenant_id = :t"),
            {"t": tenant.tenant_id},
        )

    # acme's run is requested first: it used to be picked first on every tick, forever
    acme_run = await acme.run_billing(NOV + HOUR)
    globex_run = await globex.run_billing(NOV + HOUR)

    assert (globex_run["invoices_created"], globex_run["invoices_finalized"]) == (1, 1)
    [invoice] = await globex.invoices()
    # 49.00 flat; 9 tokens are within the 1,000 included
    assert (invoice["status"], invoice["total"]) == ("finalized", 4900 + 490)
    assert (acme_run["status"], acme_run["invoices_created"]) == ("completed", 0)
    assert await acme.invoices() == []

    [q] = await _quarantined(sessions)
    [sub] = await acme.api.get("/v1/subscriptions")
    assert (q.tenant_id, q.job, q.kind, q.item_id) == (
        "acme", "invoicing.close_periods", "subscription", sub["subscription_id"],
    )  # fmt: skip
    assert "at most 9223372036854775807 can be stored" in q.reason
    await wait_outbox_drained(sessions)
    [record] = await read_topic(billing_settings, topics.EVENTS_OPS, 1)
    event = json.loads(record.value)
    assert (event["type"], event["tenantid"], event["data"]["item_id"]) == (
        "ops.quarantined", "acme", sub["subscription_id"],
    )  # fmt: skip

    # quarantined means left alone: the next run neither retries nor re-reports it
    again = await acme.run_billing(NOV + 2 * HOUR)
    assert again["invoices_created"] == 0
    assert len(await _quarantined(sessions)) == 1

    # released (the usage corrected), it is billed by the next run
    async with sessions() as session, session.begin():
        await session.execute(
            text("UPDATE usage_hourly SET sum = 9 WHERE tenant_id = :t"), {"t": "acme"}
        )
        assert await QuarantineRepository(session).release(q.id, "tests") is not None
    released = await acme.run_billing(NOV + 3 * HOUR)
    assert (released["invoices_created"], released["invoices_finalized"]) == (1, 1)


async def test_a_requested_run_that_fails_is_marked_failed_and_the_next_ones_run(
    billing: Stack, sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme = billing
    globex = await _other_tenant(acme, sessions)
    real_run = Billing.run

    async def run(self: Billing, as_of: datetime, tenant_id: str | None, *a: Any) -> Any:
        if tenant_id == "acme":
            raise ZeroDivisionError("a bug that only acme's data reaches")
        return await real_run(self, as_of, tenant_id, *a)

    monkeypatch.setattr(Billing, "run", run)
    result = await acme.api.ok("POST", "/v1/billing-runs", {"as_of": (NOV + HOUR).isoformat()})
    globex_run = await globex.run_billing(NOV + HOUR)
    assert (globex_run["invoices_created"], globex_run["invoices_finalized"]) == (1, 1)

    acme_run = await acme.api.get(result["status_url"])
    assert acme_run["status"] == "failed"
    assert acme_run["error"] == "ZeroDivisionError: a bug that only acme's data reaches"
    [q] = await _quarantined(sessions)
    assert (q.tenant_id, q.kind, q.item_id) == ("acme", "billing_run", result["billing_run_id"])


async def test_a_requested_run_that_meets_a_transient_failure_is_retried_not_failed(
    billing: Stack, sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker or the database away a moment in the middle of a requested run: the run
    is carried out again and completes; nothing is quarantined."""
    acme = billing
    await acme.api.ok(
        "POST", "/v1/subscriptions", {"customer": "alice", "plan": "pro", "start": OCT.isoformat()}
    )
    real_run = Billing.run
    failures: list[str] = []

    async def run(self: Billing, as_of: datetime, tenant_id: str | None, *a: Any) -> Any:
        if tenant_id == "acme" and not failures:
            failures.append("once")
            raise ConnectionError("the database went away a moment")
        return await real_run(self, as_of, tenant_id, *a)

    monkeypatch.setattr(Billing, "run", run)
    done = await acme.run_billing(NOV + HOUR)
    assert failures == ["once"]
    assert (done["status"], done["invoices_created"], done["invoices_finalized"]) == (
        "completed", 1, 1,
    )  # fmt: skip
    assert await _quarantined(sessions) == []


async def test_jobs_isolate_the_one_failing_item_and_apply_the_rest(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    """The primitive itself: 13 items, one poison; 12 applied in halves, one quarantined with
    its reason, once, and marked through the job's own hook."""
    jobs = Jobs(sessions, retry_initial_s=0.01, retry_max_s=0.1)
    applied: list[int] = []
    marked: list[tuple[str, str]] = []

    async def apply(tx: Tx, items: Sequence[int]) -> int:
        await tx.session.execute(text("SELECT 1"))
        if 7 in items:
            raise ValueError("item 7 is poison")
        applied.extend(items)
        return len(items)

    async def mark(tx: Tx, item: Item, reason: str) -> None:
        marked.append((item.id, reason))

    def item(i: int) -> Item:
        return Item(tenant.tenant_id, "thing", str(i))

    n = await jobs.isolated("tests.things", list(range(13)), item, apply, mark=mark)
    assert (n, sorted(applied)) == (12, [i for i in range(13) if i != 7])
    assert marked == [("7", "ValueError: item 7 is poison")]
    [q] = await _quarantined(sessions)
    assert (q.job, q.kind, q.item_id, q.error) == ("tests.things", "thing", "7", "ValueError")


async def test_operators_list_show_and_release_quarantined_items(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    jobs = Jobs(sessions, retry_initial_s=0.01, retry_max_s=0.1)
    for kind in ("subscription", "invoice"):
        await jobs.quarantine("tests.job", Item("acme", kind, "x1"), ValueError(f"bad {kind}"))

    code, out, err = await billstream(settings, "quarantine", "list", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert {(e["kind"], e["reason"]) for e in listed} == {
        ("subscription", "ValueError: bad subscription"),
        ("invoice", "ValueError: bad invoice"),
    }
    entry = next(e for e in listed if e["kind"] == "invoice")
    code, out, _ = await billstream(settings, "quarantine", "show", entry["id"])
    assert (code, json.loads(out)["item_id"]) == (0, "x1")

    release = ("quarantine", "release", entry["id"])
    code, out, _ = await billstream(settings, *release, "--actor", "ops")
    assert (code, json.loads(out)["released_by"]) == (0, "ops")
    code, _, err = await billstream(settings, *release)
    assert (code, err.strip()) == (1, f"error: no active quarantine entry {entry['id']!r}")
    code, out, _ = await billstream(settings, "quarantine", "list", "--json")
    assert [e["kind"] for e in json.loads(out)] == ["subscription"]
