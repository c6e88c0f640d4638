"""A voided credit note gives the partner back the commission it reversed, against the real
broker and PostgreSQL: the partners worker reads invoicing's events (synthetic here, as the
invoicing worker publishes them: a credit note credited to the customer's balance, then
voided while that credit is unused). Every amount is computed by hand beside it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from schemas import groups, topics
from schemas.credit_notes import CreditNoteData, CreditNoteIssued, CreditNoteVoided
from schemas.envelope import CloudEvent
from schemas.partners import entry_id
from storage.partners import CommissionEntryRow, PartnerRepository
from tests.conftest import TenantKey
from tests.integration.partners_support import (
    command,
    entries,
    entry_count,
    invoice_paid,
    refunded,
    run_commands,
    send_events,
    statements,
)
from tests.integration.support import (
    Sessions,
    read_all,
    running,
    wait_committed_to_end,
    wait_outbox_drained,
)
from workers import partners
from workers.devstack import wait_for
from workers.partners.app import build
from workers.settings import Settings


def at(day: int) -> datetime:
    return datetime(2026, 3, day, 12, tzinfo=UTC)


MARCH = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))


def note_data(
    customer: str, cn_id: str, invoice_id: str, subtotal: int, tax: int, issued: datetime
) -> CreditNoteData:
    """A credit note of a paid invoice, its whole total credited to the customer's balance."""
    return CreditNoteData(
        credit_note_id=cn_id,
        number=f"CN-{cn_id}",
        invoice_id=invoice_id,
        customer=customer,
        currency="USD",
        reason="order_change",
        status="issued",
        settle="credit",
        lines=[],
        subtotal=subtotal,
        tax=tax,
        total=subtotal + tax,
        amount_reducing_due=0,
        amount_credits_returned=0,
        refund_amount=0,
        amount_credited_to_balance=subtotal + tax,
        grant_id=f"grant-{cn_id}",
        invoice_amount_due=0,
        issued_at=issued,
    )


def issued(t: str, data: CreditNoteData) -> CreditNoteIssued:
    return CreditNoteIssued(
        source="tests", tenantid=t, subject=data.credit_note_id, time=data.issued_at, data=data
    )


def voided(t: str, data: CreditNoteData, when: datetime) -> CreditNoteVoided:
    void = data.model_copy(update={"status": "void", "voided_at": when, "void_reason": "typo"})
    return CreditNoteVoided(
        source="tests", tenantid=t, subject=data.credit_note_id, time=when, data=void
    )


async def wait_entries(sessions: Sessions, t: str, partner: str, n: int) -> None:
    async def reached() -> bool:
        return len(await entries(sessions, t, partner)) >= n

    await wait_for(reached, timeout_s=30)


async def caught_up(settings: Settings) -> None:
    await wait_committed_to_end(settings, groups.PARTNERS_INVOICING, topics.EVENTS_INVOICING, 30)
    await wait_committed_to_end(settings, groups.PARTNERS_PAYMENTS, topics.EVENTS_PAYMENTS, 30)


def ledger(rows: list[CommissionEntryRow]) -> list[tuple[str, str, int, str, str]]:
    return [(e.invoice_id, e.kind, e.amount, e.cause, e.cause_id) for e in rows]


def net(rows: list[CommissionEntryRow], invoice_id: str) -> int:
    return sum(
        e.amount if e.kind == "accrued" else -e.amount for e in rows if e.invoice_id == invoice_id
    )


async def partner_events(settings: Settings, t: str) -> list[dict[str, Any]]:
    records, _ = await read_all(settings, topics.EVENTS_PARTNERS)
    out = [json.loads(r.value) for r in records]
    return [e for e in out if e["tenantid"] == t and e["type"].startswith("commission.")]


async def test_a_voided_credit_note_restores_the_commission_it_reversed(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    async with running(build(settings)):
        setup = [
            command(t, "partner", partner_id="agent-1", name="Agent One", tier="gold"),
            command(t, "rule", key="std", partner_tier="gold", kind="percent", percent="0.125"),
            command(t, "attribute", customer="cust-a", partner_id="agent-1",
                    effective_from=datetime(2026, 1, 1, tzinfo=UTC)),
        ]  # fmt: skip
        assert {o.status for o in await run_commands(settings, sessions, setup)} == {"succeeded"}

        cn1 = note_data("cust-a", "cn-1", "inv-1", 3000, 300, at(12))
        cn2 = note_data("cust-a", "cn-2", "inv-2", 2000, 200, at(5))
        events: list[CloudEvent] = [
            # inv-1: 100.00 + 10.00 tax = 110.00, paid: N = K0 = 100.00; 12.5 % → 12.50
            invoice_paid(t, "cust-a", "inv-1", currency="USD", lines=[("base", "flat", 10000)],
                         tax=1000, period=MARCH, paid_at=at(10)),
            # a credit note of 30.00 + 3.00 tax credited to the balance: net part 33.00 *
            # 30/33 = 30.00; K = 70.00; target round(12.50 * 70/100) = 8.75: 3.75 reversed
            issued(t, cn1),
            # voided (its credit unused): K back to 100.00, target 12.50: 3.75 accrues again
            voided(t, cn1, at(15)),
            # inv-2: a credit note issued and voided before its payment is never counted:
            # 200.00 + 20.00 tax paid, N = K0 = 200.00; 12.5 % → 25.00, nothing reversed
            issued(t, cn2),
            voided(t, cn2, at(6)),
            invoice_paid(t, "cust-a", "inv-2", currency="USD", lines=[("base", "flat", 20000)],
                         tax=2000, period=MARCH, paid_at=at(8)),
        ]  # fmt: skip
        await send_events(settings, events)
        await wait_entries(sessions, t, "agent-1", 4)
        await caught_up(settings)
        rows = await entries(sessions, t, "agent-1")
        assert sorted(ledger(rows)) == sorted(
            [
                ("inv-2", "accrued", 2500, "invoice_paid", "inv-2"),
                ("inv-1", "accrued", 1250, "invoice_paid", "inv-1"),
                ("inv-1", "reversed", 375, "credit_note", "cn-1"),
                ("inv-1", "accrued", 375, "credit_note_voided", "cn-1"),
            ]
        )
        # the partner's net ledger is the original accrual again
        assert (net(rows, "inv-1"), net(rows, "inv-2")) == (1250, 2500)
        [restored] = [e for e in rows if e.cause == "credit_note_voided"]
        accrual = entry_id(t, "accrued", "inv-1", "std")
        assert restored.accrual_id == accrual
        assert restored.effective_at == at(15) and restored.base == "10000"

        # one commission.accrued event for it, naming the note and the accrual it restores
        await wait_outbox_drained(sessions)
        sent = await partner_events(settings, t)
        [ev] = [e for e in sent if e["data"]["cause"] == "credit_note_voided"]
        assert ev["type"] == "commission.accrued"
        assert {k: ev["data"][k] for k in ("kind", "amount", "cause_id", "accrual_id")} == {
            "kind": "accrued",
            "amount": 375,
            "cause_id": "cn-1",
            "accrual_id": accrual,
        }
        events_before = len(sent)

        # replays: the same events again, and copies under new ids, change nothing
        before = await entry_count(sessions)
        await send_events(settings, events)
        await send_events(settings, [e.model_copy(update={"id": e.id + "-copy"}) for e in events])
        await caught_up(settings)
        assert await entry_count(sessions) == before
        await wait_outbox_drained(sessions)
        assert len(await partner_events(settings, t)) == events_before

        # a refund after the void counts from the causes still live (cn-1 no more): 55.00 of
        # 110.00, net part 55.00 * 100/110 = 50.00; K = 50.00; target 6.25: 6.25 reversed
        await send_events(settings, [refunded(t, "cust-a", "re-1", "inv-1", 5500, at(20))])
        await wait_entries(sessions, t, "agent-1", 5)
        rows = await entries(sessions, t, "agent-1")
        assert ledger(rows)[-1] == ("inv-1", "reversed", 625, "refund", "re-1")
        assert net(rows, "inv-1") == 625

        # March's statement lists the restoration as a positive line:
        # 12.50 - 3.75 + 3.75 - 6.25 + 25.00 = 31.25
        [done] = await run_commands(
            settings, sessions, [command(t, "statement", partner_id="agent-1", period="2026-03")]
        )
        assert done.status == "succeeded"
        [march] = await statements(sessions, t, "agent-1")
        async with sessions() as db:
            view = await partners.statement_data(PartnerRepository(db), march)
        assert sorted((ln.invoice_id, ln.cause, ln.amount) for ln in view.lines) == sorted(
            [
                ("inv-2", "invoice_paid", 2500),
                ("inv-1", "invoice_paid", 1250),
                ("inv-1", "credit_note", -375),
                ("inv-1", "credit_note_voided", 375),
                ("inv-1", "refund", -625),
            ]
        )
        assert (view.total, view.amount_payable, view.status) == (3125, 3125, "payable")
