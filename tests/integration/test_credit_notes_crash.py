"""kill -9 of the invoicing worker while credit notes are issued: after a restart every
note exists once, their numbers are gapless in one sequence, each invoice's amount_credited
counts its note once, and there is one credit_note.issued event per note."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from schemas import topics
from schemas.credit_notes import CreditNoteSpec, IssueCreditNote
from schemas.invoicing import BillingRunSpec, RunBilling
from tests.conftest import TenantKey
from tests.integration.billing_seed import CALLS, seed
from tests.integration.support import (
    Sessions,
    insert_meters,
    producer,
    read_all,
    wait_outbox_drained,
)
from tests.integration.test_credits_crash import invoicing_process, scalar
from workers.devstack import wait_for
from workers.settings import Settings

N = 200  # customers, one invoice each, one note each
ANCHOR = datetime(2031, 1, 1, tzinfo=UTC)
AS_OF = datetime(2031, 2, 1, 2, tzinfo=UTC)
# each note: 1.00 tax included at the seeded 20 %: 100 * 0.2 / 1.2 = 16.67 -> 17 tax, 83 net
AMOUNT = 100


@pytest.mark.slow
async def test_kill_9_while_credit_notes_are_issued_issues_each_once_without_gaps(
    settings: Settings, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    t = tenant.tenant_id
    meters = await insert_meters(sessions, t, [CALLS])
    await seed(sessions, t, N, ANCHOR, meters["calls"].id, 1)
    log = tmp_path / "invoicing.log"
    run = RunBilling(source="tests", tenantid=t, data=BillingRunSpec(id="run-cn", as_of=AS_OF))
    async with producer(settings) as p:
        await p.send_and_wait(
            topics.COMMANDS_INVOICING, run.to_json(), key=topics.partition_key(t).encode()
        )
    with invoicing_process(settings, log) as proc:

        async def billed() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            done = "SELECT count(*) FROM invoices WHERE status = 'finalized'"
            return await scalar(sessions, done) == N

        await wait_for(billed, timeout_s=120, interval_s=0.1)
    async with sessions() as db:
        invoices = {
            ext: id
            for id, ext in await db.execute(
                text("SELECT i.id, c.external_id FROM invoices i JOIN customers c"
                     " ON c.id = i.customer_id WHERE i.tenant_id = :t"), {"t": t},
            )
        }  # fmt: skip
    async with producer(settings) as p:
        for i in range(N):
            who = f"c{i}"
            spec = CreditNoteSpec(
                id=f"cn{i}", invoice_id=invoices[who], reason="other", amount=AMOUNT
            )
            cmd = IssueCreditNote(source="tests", tenantid=t, data=spec)
            await p.send(
                topics.COMMANDS_INVOICING, cmd.to_json(), key=topics.partition_key(t, who).encode()
            )
        await p.flush()

    count = "SELECT count(*) FROM credit_notes"
    small = settings.model_copy(update={"batch_max_records": 5})  # many batches: a kill between
    with invoicing_process(small, log) as proc:

        async def issuing() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            seen.append(await scalar(sessions, count))
            return N // 4 <= seen[-1] < N  # well into it, not done

        seen: list[int] = []
        try:
            await wait_for(issuing, timeout_s=90, interval_s=0.005)
        except TimeoutError:
            raise AssertionError(f"{seen[:3]}..{seen[-3:]} {log.read_text()[-3000:]}") from None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    at_kill = await scalar(sessions, count)
    assert at_kill < N, "finished before the kill"

    with invoicing_process(settings, log) as proc:

        async def all_issued() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return await scalar(sessions, count) == N

        await wait_for(all_issued, timeout_s=120, interval_s=0.1)
        await wait_outbox_drained(sessions, timeout_s=60)
        records, _ = await read_all(settings, topics.EVENTS_INVOICING, timeout_s=60)
    print(f"notes at the kill: {at_kill}")

    async with sessions() as db:
        notes = list(
            await db.execute(text("SELECT id, number, invoice_id, total FROM credit_notes"))
        )
        credited = dict((await db.execute(text("SELECT id, amount_credited FROM invoices"))).all())
    year = min(n.number for n in notes).split("-")[1]
    assert sorted(n.number for n in notes) == [f"CN-{year}-{k:06d}" for k in range(1, N + 1)]
    assert sorted(n.id for n in notes) == sorted(f"cn{i}" for i in range(N))
    assert {n.total for n in notes} == {AMOUNT}
    assert set(credited.values()) == {AMOUNT}  # each invoice's note counted once
    issued = Counter(
        json.loads(r.value)["data"]["credit_note_id"]
        for r in records
        if json.loads(r.value)["type"] == "credit_note.issued"
    )
    # one event per note (the outbox may publish one twice: same event id)
    ids = {
        json.loads(r.value)["id"]
        for r in records
        if json.loads(r.value)["type"] == "credit_note.issued"
    }
    assert set(issued) == {f"cn{i}" for i in range(N)}
    assert len(ids) == N
    assert await scalar(sessions, "SELECT count(*) FROM quarantine") == 0
