"""kill -9 of the invoicing worker while a billing run applies prepaid credits: after a
restart every invoice is finalized exactly once and every grant is spent exactly as its
invoices say: no application lost, none written twice, no balance below zero, one
credit.applied event per ledger entry.

Customers have one or two grants each (billing_seed.grant_terms) and two ended periods, so a
grant is spent by invoices that finalize in different chunks, on both sides of a kill."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from schemas import topics
from schemas.invoicing import BillingRunSpec, RunBilling
from tests.conftest import TenantKey
from tests.integration.billing_seed import (
    CALLS,
    expected_total,
    grant_terms,
    invoice_numbers,
    seed,
    seed_grants,
)
from tests.integration.support import (
    Sessions,
    insert_meters,
    producer,
    read_all,
    wait_outbox_drained,
    worker_env,
    worker_process,
)
from workers.devstack import wait_for
from workers.invoicing import service
from workers.settings import Settings

N = 300  # customers
PERIODS = 2
ANCHOR = datetime(2031, 1, 1, tzinfo=UTC)  # periods end 2031-02-01 and 2031-03-01
AS_OF = datetime(2031, 3, 1, 2, tzinfo=UTC)  # both ended, the grace hour passed
COUNT = N * PERIODS


def invoicing_process(
    settings: Settings, log: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    env = worker_env(settings) | {
        "BILLSTREAM_INVOICING_TICK_S": "0.05",
        "BILLSTREAM_INVOICING_CHUNK": "10",
    }
    return worker_process("invoicing", env, log)


async def scalar(sessions: Sessions, sql: str, **params: object) -> int:
    async with sessions() as db:
        return int(await db.scalar(text(sql), params) or 0)


async def progress(sessions: Sessions) -> tuple[int, int]:
    """(invoices past draft, applied ledger entries)."""
    async with sessions() as db:
        row = (
            await db.execute(
                text(
                    "SELECT (SELECT count(*) FROM invoices WHERE status <> 'draft'),"
                    " (SELECT count(*) FROM credit_entries WHERE kind = 'applied')"
                )
            )
        ).one()
        return int(row[0]), int(row[1])


def expected_credits(i: int) -> list[int]:
    """What the grants of customer ``c<i>`` pay of its invoices, in period order: every
    invoice takes what is left of them, up to its total."""
    left = sum(amount for _, amount, _ in grant_terms(i))
    out = []
    for _ in range(PERIODS):
        took = min(left, expected_total(i))
        out.append(took)
        left -= took
    return out


@pytest.mark.slow
async def test_kill_9_while_credits_are_applied_spends_no_grant_twice_and_loses_nothing(
    settings: Settings, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    t = tenant.tenant_id
    meters = await insert_meters(sessions, t, [CALLS])
    await seed(sessions, t, N, ANCHOR, meters["calls"].id, PERIODS)
    assert await seed_grants(sessions, t, N, ANCHOR) == N + N // 2
    run = RunBilling(source="tests", tenantid=t, data=BillingRunSpec(id="run-crash", as_of=AS_OF))
    async with producer(settings) as p:
        await p.send_and_wait(
            topics.COMMANDS_INVOICING, run.to_json(), key=topics.partition_key(t).encode()
        )
    log = tmp_path / "invoicing.log"

    # kill -9 twice while it finalizes: early on, and once some second-period invoices
    # (spending what the first period left of a grant) are being finalized
    seen: list[tuple[int, int]] = []
    for at_least in (1, N + 1):
        with invoicing_process(settings, log) as proc:

            async def finalizing(at_least: int = at_least) -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                done, applied = await progress(sessions)
                return at_least <= done < COUNT and applied > 0

            await wait_for(finalizing, timeout_s=90, interval_s=0.01)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        seen.append(await progress(sessions))
    assert seen[-1][0] < COUNT, f"finished before the kill: {seen}"
    assert seen == sorted(seen)
    status = "SELECT status FROM billing_runs WHERE id = 'run-crash'"
    async with sessions() as db:
        assert await db.scalar(text(status)) == "pending"  # the dead worker's run

    with invoicing_process(settings, log) as proc:

        async def completed() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            async with sessions() as db:
                return bool(await db.scalar(text(status)) == "completed")

        await wait_for(completed, timeout_s=120, interval_s=0.1)
        await wait_outbox_drained(sessions, timeout_s=60)
        records, _ = await read_all(settings, topics.EVENTS_INVOICING, timeout_s=60)
    print(f"at the kills (invoices finalized, credits applied): {seen}")

    async with sessions() as db:
        invoices = {
            r.id: r
            for r in await db.execute(
                text(
                    "SELECT i.id, i.status, i.credits, i.total, i.period_start, i.finalized_at,"
                    " c.external_id FROM invoices i JOIN customers c ON c.id = i.customer_id"
                )
            )
        }
        lines = list(
            await db.execute(
                text(
                    "SELECT invoice_id, grant_id, amount FROM invoice_lines"
                    " WHERE kind = 'credit' ORDER BY invoice_id, position"
                )
            )
        )
        entries = list(
            await db.execute(
                text("SELECT id, grant_id, kind, amount, invoice_id FROM credit_entries")
            )
        )
        amounts: dict[str, int] = {
            g: a for g, a in await db.execute(text("SELECT id, amount FROM credit_grants"))
        }

    # every invoice finalized, once: gapless numbers, one invoice.finalized event each
    assert {r.status for r in invoices.values()} <= {"finalized", "paid"}
    assert len(invoices) == COUNT
    assert all(r.finalized_at == AS_OF for r in invoices.values())
    assert await invoice_numbers(sessions, t) == [
        service.invoice_number("INV", AS_OF.year, k) for k in range(1, COUNT + 1)
    ]
    events: dict[str, dict[str, dict[str, object]]] = defaultdict(dict)
    for record in records:
        event = json.loads(record.value)
        events[event["type"]][event["id"]] = event["data"]
    finalized = Counter(str(d["invoice_id"]) for d in events["invoice.finalized"].values())
    assert finalized == Counter(dict.fromkeys(invoices, 1))

    # the invoices' credit lines, the ledger and the grants agree, grant by grant
    taken: Counter[str] = Counter()
    per_invoice: Counter[str] = Counter()
    for invoice_id, grant_id, amount in lines:
        assert grant_id is not None and amount < 0, (invoice_id, grant_id, amount)
        taken[grant_id] -= amount
        per_invoice[invoice_id] -= amount
    applied: Counter[str] = Counter()
    balance: Counter[str] = Counter()
    keys: Counter[tuple[str, str]] = Counter()
    for e in entries:
        balance[e.grant_id] += e.amount
        if e.kind == "applied":
            applied[e.grant_id] -= e.amount
            keys[(e.grant_id, e.invoice_id)] += 1
            assert e.invoice_id in invoices, e
    assert {e.kind for e in entries} == {"granted", "applied"}
    assert set(keys.values()) == {1}  # one application per grant and invoice
    assert +applied == +taken
    for grant_id, amount in amounts.items():
        assert balance[grant_id] >= 0, grant_id
        assert balance[grant_id] == amount - taken[grant_id], grant_id
    for invoice_id, r in invoices.items():
        assert r.credits == per_invoice[invoice_id], invoice_id

    # ... and they are what the grants should have paid, invoice by invoice
    by_customer: dict[str, list[tuple[datetime, int, int]]] = defaultdict(list)
    for r in invoices.values():
        by_customer[r.external_id].append((r.period_start, r.credits, r.total))
    for i in range(N):
        mine = sorted(by_customer[f"c{i}"])
        want = expected_credits(i)
        assert [c for _, c, _ in mine] == want, (i, mine)
        assert [total for _, _, total in mine] == [expected_total(i) - c for c in want], i

    # one credit.applied event per applied entry (the outbox may publish one twice)
    applied_ids = {e.id for e in entries if e.kind == "applied"}
    assert {str(d["entry_id"]) for d in events["credit.applied"].values()} == applied_ids
    assert len(events["credit.applied"]) == len(applied_ids)
    assert await scalar(sessions, "SELECT count(*) FROM quarantine") == 0
