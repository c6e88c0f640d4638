"""Billing under concurrency and crashes: replicas racing for the same periods, and the
invoicing worker killed with SIGKILL in the middle of a run. Every period is invoiced
exactly once, every invoice finalized once with a gapless number and the right total."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from schemas import topics
from tests.conftest import TenantKey
from tests.integration.billing_seed import CALLS, expected_total, invoice_numbers, seed
from tests.integration.support import (
    Sessions,
    insert_meters,
    read_all,
    running,
    wait_outbox_drained,
    worker_env,
)
from workers.devstack import wait_for
from workers.invoicing import service
from workers.invoicing.app import build as build_invoicing
from workers.settings import Settings


def past_anchor(months_ago: int) -> tuple[datetime, int]:
    """An hour-aligned anchor ``months_ago`` months back (3 h off today's clock, so no
    period ends within the grace hour of now), and how many periods have ended since."""
    now = datetime.now(UTC)
    anchor = now.replace(minute=0, second=0, microsecond=0) - timedelta(
        days=31 * months_ago, hours=3
    )
    ended = 0
    while service.period(anchor, "month", ended)[1] <= now:
        ended += 1
    return anchor, ended


async def invoice_stats(sessions: Sessions) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(text("SELECT status, count(*) FROM invoices GROUP BY 1"))
        return {status: n for status, n in rows}


async def totals_by_customer(sessions: Sessions) -> list[tuple[str, int]]:
    async with sessions() as session:
        rows = await session.execute(
            text(
                "SELECT c.external_id, i.total FROM invoices i "
                "JOIN customers c ON c.id = i.customer_id ORDER BY 1, i.period_start"
            )
        )
        return [(r[0], r[1]) for r in rows]


async def invoice_events(settings: Settings) -> dict[str, set[str]]:
    """Distinct event ids per type (the outbox may publish a row twice after a crash)."""
    records, _ = await read_all(settings, topics.EVENTS_INVOICING, timeout_s=60)
    by_type: dict[str, set[str]] = {}
    for r in records:
        event = json.loads(r.value)
        by_type.setdefault(event["type"], set()).add(event["id"])
    return by_type


async def check_billed_once(
    settings: Settings, sessions: Sessions, tenant: str, n: int, periods: int
) -> None:
    count = n * periods
    assert await invoice_stats(sessions) == {"finalized": count}
    await wait_outbox_drained(sessions, timeout_s=60)
    year = datetime.now(UTC).year
    assert await invoice_numbers(sessions, tenant) == [
        service.invoice_number("INV", year, k) for k in range(1, count + 1)
    ]
    expected = sorted((f"c{i}", expected_total(i)) for i in range(n) for _ in range(periods))
    assert sorted(await totals_by_customer(sessions)) == expected
    events = await invoice_events(settings)
    assert {t: len(ids) for t, ids in events.items()} == {
        "invoice.created": count,
        "invoice.finalized": count,
    }


async def test_two_replicas_bill_every_period_once(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    n = 300
    anchor, periods = past_anchor(3)
    meters = await insert_meters(sessions, tenant.tenant_id, [CALLS])
    await seed(sessions, tenant.tenant_id, n, anchor, meters["calls"].id, periods)
    fast = settings.model_copy(update={"invoicing_tick_s": 0.05, "invoicing_chunk": 50})
    async with running(build_invoicing(fast)), running(build_invoicing(fast)):

        async def all_finalized() -> bool:
            return await invoice_stats(sessions) == {"finalized": n * periods}

        await wait_for(all_finalized, timeout_s=60)
        await check_billed_once(settings, sessions, tenant.tenant_id, n, periods)


@pytest.mark.slow
async def test_kill_9_mid_run_loses_no_invoice_and_duplicates_none(
    settings: Settings, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    n = 2_000
    anchor, periods = past_anchor(3)
    meters = await insert_meters(sessions, tenant.tenant_id, [CALLS])
    await seed(sessions, tenant.tenant_id, n, anchor, meters["calls"].id, periods)
    env = worker_env(settings) | {
        "BILLSTREAM_INVOICING_TICK_S": "0.05",
        "BILLSTREAM_INVOICING_CHUNK": "100",
    }
    log = tmp_path / "invoicing.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "workers.cli", "worker", "invoicing"],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def billed() -> int:
        return sum((await invoice_stats(sessions)).values())

    # kill it twice: once while it creates drafts, once while it finalizes them
    for point in ("draft", "finalized"):
        proc = start()
        try:

            async def reached(point: str = point) -> bool:
                stats = await invoice_stats(sessions)
                return 0 < stats.get(point, 0) < n * periods

            await wait_for(reached, timeout_s=60, interval_s=0.01)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert 0 < await billed() <= n * periods

    proc = start()
    try:

        async def done() -> bool:
            return await invoice_stats(sessions) == {"finalized": n * periods}

        await wait_for(done, timeout_s=120)
        await check_billed_once(settings, sessions, tenant.tenant_id, n, periods)
    finally:
        proc.terminate()
        proc.wait()
