"""kill -9 of the invoicing worker while a billing run applies discounts: after a restart
every invoice is finalized exactly once and every discount is applied exactly once per
invoice it counts on — no application lost, none written twice, a `once` discount on one
invoice only — and each invoice's discount lines agree with its applications.

Customers c<i> (billing_seed: 10.00 USD + calls, 20 % tax) have two ended periods. Even
customers have a customer-level 10 % `once` discount; odd customers a 3.00 USD `forever`
discount on their subscription."""

from __future__ import annotations

import os
import signal
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text

from schemas import topics
from schemas.discounts import CouponSpec
from schemas.invoicing import BillingRunSpec, RunBilling
from storage.invoicing import Customer
from storage.invoicing.discounts import Coupon, Discount
from tests.conftest import TenantKey
from tests.integration.billing_seed import CALLS, seed
from tests.integration.support import Sessions, insert_meters, producer
from tests.integration.test_credits_crash import invoicing_process, scalar
from workers.devstack import wait_for
from workers.invoicing import discounts
from workers.settings import Settings

N = 200  # customers
PERIODS = 2
ANCHOR = datetime(2031, 1, 1, tzinfo=UTC)
AS_OF = datetime(2031, 3, 1, 2, tzinfo=UTC)
COUNT = N * PERIODS
ONCE = CouponSpec(id="ten-once", name="Ten", percent_off=Decimal(10), duration="once")
FIXED = CouponSpec(
    id="three-forever", name="Three", amount_off=300, currency="USD", duration="forever"
)


async def seed_discounts(sessions: Sessions, tenant: str) -> None:
    async with sessions() as db, db.begin():
        ids = {
            c.external_id: c.id
            for c in await db.scalars(select(Customer).where(Customer.tenant_id == tenant))
        }
        await db.execute(
            insert(Coupon),
            [
                {"tenant_id": tenant, "id": c.id, "spec": c.model_dump(mode="json"),
                 "times_redeemed": N // 2}
                for c in (ONCE, FIXED)
            ],
        )  # fmt: skip
        await db.execute(
            insert(Discount),
            [
                {"tenant_id": tenant, "id": f"d{i}", "customer_id": ids[f"c{i}"],
                 "subscription_id": None if i % 2 == 0 else f"s{i}",
                 "coupon_id": ONCE.id if i % 2 == 0 else FIXED.id, "promotion_code": None,
                 "applied_at": ANCHOR - timedelta(days=1), "removed_at": None}
                for i in range(N)
            ],
        )  # fmt: skip


@pytest.mark.slow
async def test_kill_9_while_discounts_are_applied_applies_each_exactly_once_per_invoice(
    settings: Settings, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    t = tenant.tenant_id
    meters = await insert_meters(sessions, t, [CALLS])
    await seed(sessions, t, N, ANCHOR, meters["calls"].id, PERIODS)
    await seed_discounts(sessions, t)
    run = RunBilling(source="tests", tenantid=t, data=BillingRunSpec(id="run-crash", as_of=AS_OF))
    async with producer(settings) as p:
        await p.send_and_wait(
            topics.COMMANDS_INVOICING, run.to_json(), key=topics.partition_key(t).encode()
        )
    log = tmp_path / "invoicing.log"

    async def progress() -> tuple[int, int]:
        done = await scalar(sessions, "SELECT count(*) FROM invoices WHERE status <> 'draft'")
        apps = await scalar(sessions, "SELECT count(*) FROM discount_applications")
        return done, apps

    seen: list[tuple[int, int]] = []
    for at_least in (1, N + 1):  # early on, and during the second periods
        with invoicing_process(settings, log) as proc:

            async def finalizing(at_least: int = at_least) -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                done, apps = await progress()
                return at_least <= done < COUNT and apps > 0

            await wait_for(finalizing, timeout_s=90, interval_s=0.01)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        seen.append(await progress())
    assert seen[-1][0] < COUNT, f"finished before the kill: {seen}"
    status = "SELECT status FROM billing_runs WHERE id = 'run-crash'"

    with invoicing_process(settings, log) as proc:

        async def completed() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            async with sessions() as db:
                return bool(await db.scalar(text(status)) == "completed")

        await wait_for(completed, timeout_s=120, interval_s=0.1)
    print(f"at the kills (invoices finalized, discount applications): {seen}")

    async with sessions() as db:
        invoices = {
            r.id: r
            for r in await db.execute(
                text(
                    "SELECT i.id, i.status, i.discount, i.period_start, c.external_id"
                    " FROM invoices i JOIN customers c ON c.id = i.customer_id"
                )
            )
        }
        lines = list(
            await db.execute(
                text(
                    "SELECT invoice_id, position, kind, amount, applies_to, discount_id"
                    " FROM invoice_lines ORDER BY invoice_id, position"
                )
            )
        )
        apps = list(
            await db.execute(
                text("SELECT discount_id, invoice_id, amount FROM discount_applications")
            )
        )
    assert len(invoices) == COUNT
    assert {r.status for r in invoices.values()} <= {"finalized", "paid"}

    # one application per discount and invoice, on the right invoices
    pairs = Counter((a.discount_id, a.invoice_id) for a in apps)
    assert set(pairs.values()) == {1}
    per_discount: dict[str, list[str]] = defaultdict(list)
    for a in apps:
        per_discount[a.discount_id].append(a.invoice_id)
    for i in range(N):
        mine = per_discount[f"d{i}"]
        if i % 2 == 0:  # once: the first period's invoice only
            [only] = mine
            assert invoices[only].period_start == ANCHOR, i
        else:  # forever: both
            assert len(mine) == PERIODS, i

    # each invoice's discount lines are its applications, computed by the documented rule
    by_invoice: dict[str, list[tuple[int, str, int, int | None, str | None]]] = defaultdict(list)
    for ln in lines:
        by_invoice[ln.invoice_id].append(
            (ln.position, ln.kind, ln.amount, ln.applies_to, ln.discount_id)
        )
    applied = {(a.discount_id, a.invoice_id): a.amount for a in apps}
    for invoice_id, r in invoices.items():
        ls = by_invoice[invoice_id]
        charges = [amount for _, kind, amount, _, _ in ls if kind != "discount"]
        found = [
            (applies_to, -amount) for _, kind, amount, applies_to, _ in ls if kind == "discount"
        ]
        i = int(r.external_id[1:])
        key = (f"d{i}", invoice_id)
        if key not in applied:
            assert found == [] and r.discount == 0, invoice_id
            continue
        if i % 2 == 0:  # 10 % of each charge line above 0, rounded once (half-even)
            want = [
                (p, discounts.percent_of(a, Decimal(10), "half_even"))
                for p, a in enumerate(charges)
                if a > 0 and discounts.percent_of(a, Decimal(10), "half_even") > 0
            ]
        else:  # 300 off, in line order: the 10.00 base fee (line 0) takes it all
            want = [(0, 300)]
        assert found == want, (invoice_id, ls)
        assert r.discount == sum(a for _, a in want) == applied[key], invoice_id
    assert await scalar(sessions, "SELECT count(*) FROM quarantine") == 0
