"""The partners worker as a process of its own, killed with ``kill -9`` in the middle of
issuing a statement: after a restart there is exactly one statement per partner, month and
currency, with every one of its lines, and gapless numbers."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from storage.partners import CommissionEntryRow, PartnerRepository
from tests.conftest import KafkaServer, TenantKey
from tests.integration.partners_support import command, send_commands, statements
from tests.integration.support import (
    Sessions,
    command_outcome,
    quick_rejoin,
    waiting_on_lock,
    worker_env,
    worker_process,
)
from workers import partners
from workers.devstack import wait_for
from workers.settings import Settings

N = 300  # ledger entries per currency


def entry(tenant: str, i: int, currency: str) -> CommissionEntryRow:
    return CommissionEntryRow(
        tenant_id=tenant,
        entry_id=f"cme_{currency.lower()}{i:028x}",
        kind="accrued" if i % 5 else "reversed",
        partner_id="agent-1",
        customer=f"cust-{i}",
        invoice_id=f"inv-{currency}-{i}",
        invoice_number=f"INV-{i}",
        rule="std",
        rule_kind="percent",
        currency=currency,
        base="1000",
        amount=100 + i,
        period="2026-03",
        effective_at=datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=i),
        cause="invoice_paid" if i % 5 else "refund",
        cause_id=f"inv-{i}",
        accrual_id=None,
        statement_id=None,
    )


async def test_kill_9_during_statement_issue_leaves_one_statement_with_all_its_lines(
    settings: Settings, sessions: Sessions, tenant: TenantKey, kafka: KafkaServer, tmp_path: Path
) -> None:
    t = tenant.tenant_id
    s = quick_rejoin(settings, kafka)
    async with sessions() as db, db.begin():
        repo = PartnerRepository(db)
        await repo.upsert_partner(t, "agent-1", "Agent One", "gold", None)
        await repo.add_entries([entry(t, i, c) for c in ("JPY", "USD") for i in range(N)])
        await repo.next_number(t, datetime.now(UTC).year)  # the counter row exists: CS-…-1
    expected = {c: sum((100 + i) * (1 if i % 5 else -1) for i in range(N)) for c in ("JPY", "USD")}
    env = worker_env(s)
    log = tmp_path / "partners.log"
    issue = command(t, "statement", partner_id="agent-1", period="2026-03")
    # hold the statement-number counter: the issue stops inside its transaction, after it
    # has locked the partner and its entries and before its statements are written
    async with sessions() as holder, holder.begin():
        await holder.execute(
            text("SELECT 1 FROM commission_statement_numbers WHERE tenant_id = :t FOR UPDATE"),
            {"t": t},
        )
        with worker_process("partners", env, log, graceful=False) as proc:
            await send_commands(s, [issue])
            await wait_for(lambda: waiting_on_lock(sessions), timeout_s=30)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert await statements(sessions, t, "agent-1") == []  # nothing half-written
    with worker_process("partners", env, log):
        outcome = await command_outcome(sessions, t, issue.id, 60)
        assert outcome.status == "succeeded", outcome.error
        # issuing the month again answers the same statements
        again = command(t, "statement", partner_id="agent-1", period="2026-03")
        await send_commands(s, [again])
        second = await command_outcome(sessions, t, again.id, 60)
    assert second.result is not None and second.result["issued"] is False
    rows = await statements(sessions, t, "agent-1")
    assert sorted((r.currency, r.total) for r in rows) == sorted(expected.items())
    year = datetime.now(UTC).year
    assert sorted(r.number for r in rows) == [f"CS-{year}-000002", f"CS-{year}-000003"]
    async with sessions() as db:
        repo = PartnerRepository(db)
        for r in rows:
            data = await partners.statement_data(repo, r)
            assert len(data.lines) == N and sum(ln.amount for ln in data.lines) == data.total
