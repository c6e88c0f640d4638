"""kill -9 of the invoicing worker while one-off invoices are created: after a restart every
requested invoice exists exactly once (each command is also sent a second time as another
command with the same idempotency key, as a producer's retry would), numbered without a
gap, with one invoice.created and one invoice.finalized each."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text

from schemas import topics
from schemas.envelope import new_id
from schemas.one_off import CreateInvoice, OneOffInvoiceSpec, OneOffLine
from storage.invoicing import InvoicingRepository
from tests.conftest import TenantKey
from tests.integration.support import (
    Sessions,
    producer,
    read_all,
    send_records,
    wait_outbox_drained,
    worker_env,
    worker_process,
)
from workers.devstack import wait_for
from workers.invoicing import service
from workers.settings import Settings

N = 300  # invoices requested
CUSTOMERS = 30


def invoicing_process(
    settings: Settings, log: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    env = worker_env(settings) | {"BILLSTREAM_BATCH_MAX_RECORDS": "5"}
    return worker_process("invoicing", env, log)


def command(tenant: str, i: int, invoice_id: str) -> CreateInvoice:
    # 3 x 1.005 USD = 3.015 -> 301.5 cents -> 302 (half-even), plus (i + 1) x 0.01 USD:
    # 303 + i cents
    lines = [
        OneOffLine(description="Booking", quantity=Decimal("3"), unit_price=Decimal("1.005")),
        OneOffLine(description="Fee", quantity=Decimal(i + 1), unit_price=Decimal("0.01")),
    ]
    spec = OneOffInvoiceSpec(
        invoice_id=invoice_id, customer=f"c{i % CUSTOMERS}", idempotency_key=f"booking-{i}",
        lines=lines, finalize=True,
    )  # fmt: skip
    return CreateInvoice(source="tests", tenantid=tenant, data=spec)


async def count(sessions: Sessions) -> int:
    async with sessions() as db:
        return int(await db.scalar(text("SELECT count(*) FROM invoices")) or 0)


@pytest.mark.slow
async def test_kill_9_while_one_off_invoices_are_created_bills_each_once(
    settings: Settings, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    t = tenant.tenant_id
    async with sessions() as db, db.begin():
        repo = InvoicingRepository(db)
        for c in range(CUSTOMERS):
            await repo.add_customer(new_id(), t, {
                "external_id": f"c{c}", "name": f"c{c}", "email": None, "currency": "USD",
                "tax_rate": None, "tax_exempt": False, "net_terms_days": 30,
                "billing_address": None,
            })  # fmt: skip
    records = []
    for i in range(N):
        first = command(t, i, f"inv-{i}")
        retry = command(t, i, f"inv-{i}-retry")  # another id, the same key: the same invoice
        key = topics.partition_key(t, first.data.customer).encode()
        records += [(key, first.to_json()), (key, retry.to_json())]
    async with producer(settings) as p:
        await send_records(p, topics.COMMANDS_INVOICING, records)
    log = tmp_path / "invoicing.log"

    seen = []
    for at_least in (1, N // 3):
        with invoicing_process(settings, log) as proc:

            async def creating(at_least: int = at_least) -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                return at_least <= await count(sessions) < N

            await wait_for(creating, timeout_s=90, interval_s=0.01)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        seen.append(await count(sessions))
    assert seen[-1] < N, f"finished before the kill: {seen}"

    with invoicing_process(settings, log) as proc:

        async def all_there() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return await count(sessions) >= N

        await wait_for(all_there, timeout_s=120, interval_s=0.1)
        await wait_outbox_drained(sessions, timeout_s=60)
        published, _ = await read_all(settings, topics.EVENTS_INVOICING, timeout_s=60)
    print(f"invoices at the kills: {seen}")

    async with sessions() as db:
        rows = list(
            await db.execute(
                text(
                    "SELECT id, idempotency_key, number, status, total, kind FROM invoices"
                    " WHERE tenant_id = :t ORDER BY number"
                ),
                {"t": t},
            )
        )
    # every request exactly once, under the id of its first command; gapless numbers
    assert len(rows) == N
    assert sorted(r.id for r in rows) == sorted(f"inv-{i}" for i in range(N))
    assert Counter(r.idempotency_key for r in rows) == Counter(f"booking-{i}" for i in range(N))
    year = datetime.now(UTC).year
    assert [r.number for r in rows] == [
        service.invoice_number("INV", year, k) for k in range(1, N + 1)
    ]
    assert {(r.status, r.kind) for r in rows} == {("finalized", "one_off")}
    assert {r.id: r.total for r in rows} == {f"inv-{i}": 303 + i for i in range(N)}

    events: dict[str, dict[str, str]] = defaultdict(dict)  # by type: event id -> invoice
    for record in published:
        event = json.loads(record.value)
        events[event["type"]][event["id"]] = event["data"]["invoice_id"]
    for kind in ("invoice.created", "invoice.finalized"):
        assert Counter(events[kind].values()) == Counter(f"inv-{i}" for i in range(N)), kind
