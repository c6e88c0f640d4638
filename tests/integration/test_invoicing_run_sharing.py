"""Replicas share a requested billing run (issue 22): one holds it, the others help, working
the same run's chunks. Every period is invoiced once, numbers stay gapless, the run's counts
equal its invoices, and the holder never says "completed" while a helper's chunk is in
flight."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from schemas import topics
from schemas.invoicing import BillingRunSpec, RunBilling
from storage.invoicing.runs import HELPING, HOLDING
from tests.conftest import TenantKey
from tests.integration.billing_seed import CALLS, expected_total, invoice_numbers, seed
from tests.integration.support import (
    Sessions,
    insert_meters,
    producer,
    running,
    worker_env,
    worker_process,
)
from workers.devstack import wait_for
from workers.invoicing import service
from workers.invoicing.app import build as build_invoicing
from workers.invoicing.jobs import Billing
from workers.runtime import Jobs
from workers.settings import Settings

ANCHOR = datetime(2031, 1, 1, tzinfo=UTC)  # the scheduler's own runs (as of now) never bill it
AS_OF = datetime(2031, 2, 1, 2, tzinfo=UTC)  # January ended, its grace hour passed


async def request_run(settings: Settings, tenant: str, run_id: str) -> None:
    run = RunBilling(source="tests", tenantid=tenant, data=BillingRunSpec(id=run_id, as_of=AS_OF))
    async with producer(settings) as p:
        await p.send_and_wait(
            topics.COMMANDS_INVOICING, run.to_json(), key=topics.partition_key(tenant).encode()
        )


async def run_and_drafts(sessions: Sessions, tenant: str, run_id: str) -> tuple[Any, ...] | None:
    """The run's status and counts and the tenant's invoices still drafts, read in ONE
    statement (one snapshot): what a client polling the run would see at that instant."""
    async with sessions() as db:
        row = (
            await db.execute(
                text(
                    "SELECT r.status, r.invoices_created, r.invoices_finalized, "
                    "(SELECT count(*) FROM invoices i WHERE i.tenant_id = r.tenant_id "
                    " AND i.status = 'draft') "
                    "FROM billing_runs r WHERE r.tenant_id = :t AND r.id = :id"
                ),
                {"t": tenant, "id": run_id},
            )
        ).first()
        return None if row is None else tuple(row)


async def invoices_by_subscription(sessions: Sessions, tenant: str) -> dict[str, list[str]]:
    async with sessions() as db:
        rows = await db.execute(
            text("SELECT subscription_id, status FROM invoices WHERE tenant_id = :t"),
            {"t": tenant},
        )
        out: dict[str, list[str]] = {}
        for sub, status in rows:
            out.setdefault(sub, []).append(status)
        return out


async def check_invoiced_once(sessions: Sessions, tenant: str, n: int) -> None:
    """Every subscription's period invoiced once, finalized, with its total by hand, and the
    numbers gapless."""
    assert await invoices_by_subscription(sessions, tenant) == {
        f"s{i}": ["finalized"] for i in range(n)
    }
    async with sessions() as db:
        rows = await db.execute(
            text(
                "SELECT c.external_id, i.total FROM invoices i "
                "JOIN customers c ON c.id = i.customer_id WHERE i.tenant_id = :t"
            ),
            {"t": tenant},
        )
        assert dict(rows.all()) == {f"c{i}": expected_total(i) for i in range(n)}
    assert await invoice_numbers(sessions, tenant) == [
        service.invoice_number("INV", AS_OF.year, k) for k in range(1, n + 1)
    ]


async def completed_whole(sessions: Sessions, tenant: str, run_id: str, n: int) -> None:
    """Wait for the run to say completed; the instant it does, its counts are ``n`` and no
    invoice of it is left a draft."""

    async def completed() -> tuple[Any, ...] | None:
        seen = await run_and_drafts(sessions, tenant, run_id)
        if seen is None or seen[0] != "completed":
            return None
        assert seen == ("completed", n, n, 0)
        return seen

    await wait_for(completed, timeout_s=120, interval_s=0.02)


def billed_by(log: Path, run_id: str) -> list[dict[str, Any]]:
    """The ``billing run`` lines a worker process logged for the run (JSON lines)."""
    lines = []
    for raw in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(raw)
            if line.get("event") == "billing run" and line.get("run") == run_id:
                lines.append(line)
    return lines


async def test_two_replicas_share_a_requested_run(
    settings: Settings, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    n = 1_000
    t = tenant.tenant_id
    meters = await insert_meters(sessions, t, [CALLS])
    await seed(sessions, t, n, ANCHOR, meters["calls"].id, periods=1)
    env = worker_env(settings) | {
        "BILLSTREAM_INVOICING_TICK_S": "0.05",
        "BILLSTREAM_INVOICING_CHUNK": "20",  # 50 chunks to close, 50 to finalize
    }
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with worker_process("invoicing", env, logs[0]) as a, worker_process("invoicing", env, logs[1]):

        async def started() -> bool:
            assert a.poll() is None, logs[0].read_text()[-3000:]
            return all(b"worker started" in log.read_bytes() for log in logs)

        await wait_for(started, timeout_s=60)
        await request_run(settings, t, "run-shared")

        await completed_whole(sessions, t, "run-shared", n)

    await check_invoiced_once(sessions, t, n)
    # both replicas finalized some of the run's invoices: one held it, the other helped
    lines = [billed_by(log, "run-shared") for log in logs]
    finalized = [sum(line["finalized"] for line in mine) for mine in lines]
    created = [sum(line["created"] for line in mine) for mine in lines]
    assert all(k > 0 for k in finalized), finalized
    assert (sum(created), sum(finalized)) == (n, n)
    helping = [{line["helping"] for line in mine} for mine in lines]
    assert sorted(helping, key=sorted) == [{False}, {True}], helping  # one holder, one helper


@contextlib.asynccontextmanager
async def helping_in_flight(sessions: Sessions, tenant: str, run_id: str) -> AsyncIterator[None]:
    """What a helper working a chunk holds: the run's "helping" lock, shared, on a connection
    of its own, and a claimed subscription (s0) locked in a transaction. On the way out the
    helper dies: its transaction rolls back (s0 not billed) and its lock goes."""
    async with sessions() as lock_session, sessions() as chunk:
        conn = await lock_session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        key = {"ns": HELPING, "run": f"{tenant}/{run_id}"}
        assert await conn.scalar(
            text("SELECT pg_try_advisory_lock_shared(hashtext(:ns), hashtext(:run))"), key
        )
        try:
            async with chunk.begin():
                await chunk.execute(
                    text("SELECT 1 FROM subscriptions WHERE tenant_id = :t AND id = :s FOR UPDATE"),
                    {"t": tenant, "s": "s0"},
                )
                yield
                await chunk.rollback()
        finally:
            await conn.scalar(
                text("SELECT pg_advisory_unlock_shared(hashtext(:ns), hashtext(:run))"), key
            )


async def holder_waiting(sessions: Sessions, tenant: str, run_id: str) -> bool:
    """Whether a backend is waiting (not granted) for the run's "helping" lock."""
    async with sessions() as db:
        return bool(
            await db.scalar(
                text(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                    "AND NOT granted AND classid = hashtext(:ns)::oid "
                    "AND objid = hashtext(:run)::oid AND objsubid = 2)"
                ),
                {"ns": HELPING, "run": f"{tenant}/{run_id}"},
            )
        )


async def test_the_holder_completes_the_run_only_once_its_helpers_chunks_are_done(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    n = 30
    t = tenant.tenant_id
    meters = await insert_meters(sessions, t, [CALLS])
    await seed(sessions, t, n, ANCHOR, meters["calls"].id, periods=1)
    fast = settings.model_copy(update={"invoicing_tick_s": 0.05, "invoicing_chunk": 10})
    async with running(build_invoicing(fast)):
        async with helping_in_flight(sessions, t, "run-wait"):
            await request_run(settings, t, "run-wait")

            async def waiting() -> bool:
                return await holder_waiting(sessions, t, "run-wait")

            # the holder's own work is done (every subscription but the helper's s0 billed)
            # and it waits for the helper: the run is still pending, with what was done
            await wait_for(waiting, timeout_s=60, interval_s=0.02)
            assert await run_and_drafts(sessions, t, "run-wait") == ("pending", n - 1, n - 1, 0)
            billed = await invoices_by_subscription(sessions, t)
            assert "s0" not in billed
            assert billed == {f"s{i}": ["finalized"] for i in range(1, n)}
        # the helper died mid-chunk: the holder bills what it left, then completes the run

        async def completed() -> tuple[Any, ...] | None:
            seen = await run_and_drafts(sessions, t, "run-wait")
            return seen if seen is not None and seen[0] == "completed" else None

        assert await wait_for(completed, timeout_s=60) == ("completed", n, n, 0)
    await check_invoiced_once(sessions, t, n)


async def both_locks_held(sessions: Sessions, tenant: str, run_id: str) -> bool:
    """Whether the run is held ("holding") and helped ("helping") at this instant."""
    async with sessions() as db:
        held = await db.scalar(
            text(
                "SELECT count(DISTINCT classid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND objsubid = 2 AND objid = hashtext(:run)::oid "
                "AND classid IN (hashtext(:holding)::oid, hashtext(:helping)::oid)"
            ),
            {"holding": HOLDING, "helping": HELPING, "run": f"{tenant}/{run_id}"},
        )
        return bool(held == 2)


def logged(log: Path, event: str, run_id: str) -> bool:
    for raw in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(raw)
            if line.get("event") == event and line.get("run") == run_id:
                return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("killed", ["helping", "holding"])
async def test_a_replica_killed_mid_run_leaves_the_counts_exact(
    settings: Settings, sessions: Sessions, tenant: TenantKey, tmp_path: Path, killed: str
) -> None:
    """kill -9 of the helper (its chunk in flight rolls back, its lock goes: the holder bills
    what it left) or of the holder (the run stays pending; the other replica holds it
    next): the run completes, every period invoiced once, its counts equal its invoices."""
    n = 2_000
    t = tenant.tenant_id
    meters = await insert_meters(sessions, t, [CALLS])
    await seed(sessions, t, n, ANCHOR, meters["calls"].id, periods=1)
    env = worker_env(settings) | {
        "BILLSTREAM_INVOICING_TICK_S": "0.05",
        "BILLSTREAM_INVOICING_CHUNK": "20",
    }
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with (
        worker_process("invoicing", env, logs[0]) as a,
        worker_process("invoicing", env, logs[1]) as b,
    ):

        async def started() -> bool:
            assert a.poll() is None and b.poll() is None
            return all(b"worker started" in log.read_bytes() for log in logs)

        await wait_for(started, timeout_s=60)
        await request_run(settings, t, "run-kill")

        async def both_at_work() -> subprocess.Popen[bytes] | None:
            if not await both_locks_held(sessions, t, "run-kill"):
                return None
            seen = await run_and_drafts(sessions, t, "run-kill")
            if seen is None or not 0 < seen[2] < n - 200:
                return None  # not finalizing yet, or nearly done
            event = "helping billing run" if killed == "helping" else "billing run held"
            for proc, log in zip((a, b), logs, strict=True):
                if logged(log, event, "run-kill"):
                    return proc
            return None

        victim = await wait_for(both_at_work, timeout_s=60, interval_s=0.01)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()

        await completed_whole(sessions, t, "run-kill", n)
    await check_invoiced_once(sessions, t, n)


async def test_a_replica_finding_every_draft_locked_waits_then_finalizes_them(
    sessions: Sessions, tenant: TenantKey
) -> None:
    """Another replica's snapshot of the drafts' offsets (one statement over every draft, a
    second or more at 100,000) holds them all locked when this replica starts finalizing:
    every claim skips them. The run waits for the lock and finalizes them once it is
    released, instead of ending its phase with nothing done (one of two replicas then sat
    out the phase, the holder waiting for its helper to finalize alone)."""
    n = 30
    t = tenant.tenant_id
    meters = await insert_meters(sessions, t, [CALLS])
    await seed(sessions, t, n, ANCHOR, meters["calls"].id, periods=1)
    billing = Billing(
        Jobs(sessions, retry_initial_s=0.01, retry_max_s=0.1), chunk=10, lookback=timedelta(60)
    )
    # January closed, its grace hour not yet over: every invoice a draft
    closed = await billing.run(AS_OF - timedelta(hours=1, minutes=30), t, {}, {})
    assert (closed.invoices_created, closed.invoices_finalized) == (n, 0)
    async with sessions() as other, other.begin():
        await other.execute(
            text("SELECT 1 FROM invoices WHERE tenant_id = :t AND status = 'draft' FOR UPDATE"),
            {"t": t},
        )
        run = asyncio.create_task(billing.run(AS_OF, t, {}, {}))

        async def waiting_for_the_lock() -> bool:
            assert not run.done(), f"gave up with every draft locked: {run.result()}"
            async with sessions() as db:
                waits = text("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted)")
                return bool(await db.scalar(waits))

        await wait_for(waiting_for_the_lock, timeout_s=30, interval_s=0.02)
    result = await asyncio.wait_for(run, timeout=60)
    assert (result.invoices_finalized, result.drafts_waiting) == (n, 0)
    await check_invoiced_once(sessions, t, n)
