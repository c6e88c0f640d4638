"""Partners and commissions against the real broker and PostgreSQL: the partners worker reads
invoicing's and payments' events (synthetic here, as those workers publish them) and its
commands. Every amount is computed by hand in the comments beside it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from schemas import groups, topics
from schemas.envelope import CloudEvent
from storage.partners import PartnerRepository
from tests.conftest import TenantKey, make_tenant
from tests.integration.partners_support import (
    command,
    credit_note,
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
    producer,
    read_all,
    running,
    wait_committed_to_end,
)
from tests.integration.test_credit_notes import note, pay_offline
from tests.integration.test_invoicing import stack
from tests.integration.test_one_off import USD_LINES, create, customer, outcome
from workers import partners
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.partners.app import build
from workers.payments.app import build as build_payments
from workers.settings import Settings


def at(month: int, day: int) -> datetime:
    return datetime(2026, month, day, 12, tzinfo=UTC)


def month(m: int) -> tuple[datetime, datetime]:
    return datetime(2026, m, 1, tzinfo=UTC), datetime(2026, m + 1, 1, tzinfo=UTC)


async def wait_entries(sessions: Sessions, tenant: str, partner: str, n: int) -> None:
    async def reached() -> bool:
        return len(await entries(sessions, tenant, partner)) >= n

    await wait_for(reached, timeout_s=30)


async def caught_up(settings: Settings) -> None:
    await wait_committed_to_end(settings, groups.PARTNERS_INVOICING, topics.EVENTS_INVOICING, 30)
    await wait_committed_to_end(settings, groups.PARTNERS_PAYMENTS, topics.EVENTS_PAYMENTS, 30)


async def test_commissions_by_hand_statements_reversals_replays_payouts(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    t = tenant.tenant_id
    other = (await make_tenant(sessions, "other")).tenant_id
    async with running(build(settings)):
        setup = [
            command(t, "partner", partner_id="agent-1", name="Agent One", tier="gold"),
            command(t, "partner", partner_id="agent-2", name="Agent Two", tier="volume"),
            command(t, "rule", key="std", partner_tier="gold", kind="percent", percent="0.1"),
            command(
                t,
                "rule",
                key="vol",
                partner_tier="volume",
                kind="tiered",
                currency="BHD",
                tiers=[
                    {"up_to": 100_000, "percent": "0.05"},
                    {"up_to": 300_000, "percent": "0.1"},
                    {"up_to": None, "percent": "0.15"},
                ],
            ),
            command(
                t,
                "attribute",
                customer="cust-a",
                partner_id="agent-1",
                effective_from=at(3, 1).replace(hour=0),
            ),
            command(
                t,
                "attribute",
                customer="cust-b",
                partner_id="agent-2",
                effective_from=at(1, 1).replace(hour=0),
            ),
            # another tenant: the same customer id, its own partner
            command(other, "partner", partner_id="agent-1", name="Other's", tier="gold"),
            command(other, "rule", key="std", partner_tier="gold", kind="percent", percent="0.5"),
            command(
                other, "attribute", customer="cust-a", partner_id="agent-1", effective_from=at(1, 1)
            ),
        ]
        outcomes = await run_commands(settings, sessions, setup)
        assert [o.status for o in outcomes] == ["succeeded"] * len(setup)
        # an unknown partner is refused, naming the field; nothing written
        bad = await run_commands(
            settings,
            sessions,
            [
                command(
                    t, "attribute", customer="cust-z", partner_id="nobody", effective_from=at(1, 1)
                )
            ],
        )
        assert bad[0].status == "failed"
        assert bad[0].error == {
            "code": "not_found",
            "message": "no partner 'nobody'",
            "field": "partner_id",
        }

        events: list[CloudEvent] = [
            # February's invoice, before the attribution's effective date: earns nothing
            invoice_paid(
                t,
                "cust-a",
                "inv-0",
                currency="USD",
                lines=[("base", "flat", 10000)],
                tax=0,
                period=month(2),
                paid_at=at(3, 5),
            ),
            # March: base 100.00 + api 50.00, a 15.00 discount, 20.00 of credits, 14.85 tax
            # total 129.85; N = 129.85 - 14.85 = 115.00; 10 % = 11.50
            invoice_paid(
                t,
                "cust-a",
                "inv-1",
                currency="USD",
                lines=[
                    ("base", "flat", 10000),
                    ("api", "usage", 5000),
                    ("base", "discount", -1500),
                    ("credit", "credit", -2000),
                ],
                tax=1485,
                period=month(3),
                paid_at=at(3, 10),
            ),
            # agent-2 in BHD (3 decimals), tiers 5 % to 100.000, 10 % to 300.000, 15 % above
            invoice_paid(
                t,
                "cust-b",
                "b-1",
                currency="BHD",
                lines=[("seat", "flat", 80_000)],
                tax=8_000,
                period=month(4),
                paid_at=at(4, 2),
            ),
            invoice_paid(
                t,
                "cust-b",
                "b-2",
                currency="BHD",
                lines=[("seat", "flat", 50_001)],
                tax=5_000,
                period=month(4),
                paid_at=at(4, 9),
            ),
            invoice_paid(
                t,
                "cust-b",
                "b-3",
                currency="BHD",
                lines=[("seat", "flat", 250_000)],
                tax=25_000,
                period=month(4),
                paid_at=at(4, 20),
            ),
        ]
        await send_events(settings, events)
        await wait_entries(sessions, t, "agent-1", 1)
        await wait_entries(sessions, t, "agent-2", 3)
        await caught_up(settings)
        a1 = await entries(sessions, t, "agent-1")
        assert [(e.invoice_id, e.kind, e.amount, e.base) for e in a1] == [
            ("inv-1", "accrued", 1150, "11500")
        ]
        a2 = await entries(sessions, t, "agent-2")
        # b-1: [0, 80.000) at 5 % = 4.000
        # b-2: [80.000, 100.000) 5 % = 1.000 + [100.000, 130.001) 10 % = 3.0001 → 4.000
        # b-3: [130.001, 300.000) 10 % = 16.9999 + [300.000, 380.001) 15 % = 12.00015 → 29.000
        assert [(e.invoice_id, e.amount) for e in a2] == [
            ("b-1", 4000),
            ("b-2", 4000),
            ("b-3", 29000),
        ]

        # March's statement for agent-1
        [issued] = await run_commands(
            settings, sessions, [command(t, "statement", partner_id="agent-1", period="2026-03")]
        )
        assert issued.status == "succeeded"
        [march] = await statements(sessions, t, "agent-1")
        async with sessions() as db:
            data = await partners.statement_data(PartnerRepository(db), march)
        assert (data.number, data.total, data.amount_payable, data.status) == (
            "CS-2026-000001",
            1150,
            1150,
            "payable",
        )
        assert [(ln.invoice_id, ln.invoice_number, ln.kind, ln.amount) for ln in data.lines] == [
            ("inv-1", "INV-inv-1", "accrued", 1150)
        ]
        # a second issue of March is the same statement
        [again] = await run_commands(
            settings, sessions, [command(t, "statement", partner_id="agent-1", period="2026-03")]
        )
        assert again.result is not None and again.result["issued"] is False
        assert [s["number"] for s in again.result["statements"]] == ["CS-2026-000001"]

        # after the statement: half of inv-1 refunded in April
        # net part 64.93 * 115.00 / 129.85 = 57.504…; K = 57.495…;
        # target round(11.50 * K / 115.00) = round(5.7495…) = 5.75 → 5.75 reversed
        later: list[CloudEvent] = [
            refunded(t, "cust-a", "ref-1", "inv-1", 6493, at(4, 2)),
            # May: inv-2 paid (111.00 with 11.00 tax: N 100.00 → 10.00), then a credit note
            # refunding 20.00 + 2.00 tax: its net part 20.00 → K 80.00 → 8.00 kept: 2.00 back
            invoice_paid(
                t,
                "cust-a",
                "inv-2",
                currency="USD",
                lines=[("base", "flat", 10000)],
                tax=1100,
                period=month(5),
                paid_at=at(5, 3),
            ),
            credit_note(
                t, "cust-a", "cn-1", "inv-2", subtotal=2000, tax=200, refund=2200, at=at(5, 4)
            ),
            # a credit note's own refund through payments is counted by the credit note
            refunded(t, "cust-a", "cn_0123456789abcdef0123456789abcdef", "inv-2", 2200, at(5, 4)),
        ]
        await send_events(settings, later)
        await wait_entries(sessions, t, "agent-1", 4)
        await caught_up(settings)
        a1 = await entries(sessions, t, "agent-1")
        assert [(e.invoice_id, e.kind, e.amount, e.cause, e.cause_id) for e in a1] == [
            ("inv-1", "accrued", 1150, "invoice_paid", "inv-1"),
            ("inv-1", "reversed", 575, "refund", "ref-1"),
            ("inv-2", "accrued", 1000, "invoice_paid", "inv-2"),
            ("inv-2", "reversed", 200, "credit_note", "cn-1"),
        ]

        # replays: the same events again, and copies under new ids, change nothing
        before = await entry_count(sessions)
        await send_events(settings, events + later)
        await send_events(
            settings, [e.model_copy(update={"id": e.id + "-copy"}) for e in events + later]
        )
        await caught_up(settings)
        assert await entry_count(sessions) == before

        # April's statement: only the reversal, a negative total carried; May takes it over
        outcomes = await run_commands(
            settings,
            sessions,
            [
                command(t, "statement", partner_id="agent-1", period="2026-04"),
                command(t, "statement", partner_id="agent-1", period="2026-05"),
                command(t, "statement", partner_id="agent-2", period="2026-04"),
            ],
        )
        assert [o.status for o in outcomes] == ["succeeded"] * 3
        async with sessions() as db:
            repo = PartnerRepository(db)
            views = {
                s.period: await partners.statement_data(repo, s)
                for s in await repo.statements(t, "agent-1")
            }
            [bhd] = await repo.statements(t, "agent-2")
            bhd_view = await partners.statement_data(repo, bhd)
        april, may = views["2026-04"], views["2026-05"]
        assert [(ln.kind, ln.invoice_id, ln.amount) for ln in april.lines] == [
            ("reversed", "inv-1", -575)
        ]
        assert (april.total, april.amount_payable, april.status) == (-575, 0, "carried")
        # May: -5.75 carried + 10.00 - 2.00 = 2.25
        assert [(ln.kind, ln.amount) for ln in may.lines] == [
            ("carried", -575),
            ("accrued", 1000),
            ("reversed", -200),
        ]
        assert (may.total, may.amount_payable, may.status) == (225, 225, "payable")
        assert views["2026-04"].statement_id == may.lines[0].entry_id
        assert (bhd_view.currency, bhd_view.total) == ("BHD", 37000)
        numbers = sorted(v.number for v in [*views.values(), bhd_view])
        assert numbers == [f"CS-2026-{n:06d}" for n in range(1, 5)]  # gapless

        # payouts against May's statement: 1.00, then 1.25 (paid), then nothing more
        pay = [
            command(
                t,
                "payout",
                payout_id="po-1",
                statement_id=may.statement_id,
                amount=100,
                reference="TRX 1",
            ),
            command(
                t,
                "payout",
                payout_id="po-2",
                statement_id=may.statement_id,
                amount=125,
                reference="TRX 2",
            ),
            command(
                t,
                "payout",
                payout_id="po-3",
                statement_id=may.statement_id,
                amount=1,
                reference="TRX 3",
            ),
            command(
                other,
                "payout",
                payout_id="po-4",
                statement_id=may.statement_id,
                amount=1,
                reference="X",
            ),
        ]
        outcomes = await run_commands(settings, sessions, pay)
        assert [o.status for o in outcomes] == ["succeeded", "succeeded", "failed", "failed"]
        assert outcomes[1].result is not None and outcomes[1].result["status"] == "paid"
        assert (
            outcomes[2].error is not None and outcomes[2].error["code"] == "payout_exceeds_payable"
        )
        assert outcomes[3].error is not None and outcomes[3].error["code"] == "not_found"

        # a month that has not ended is refused
        [early] = await run_commands(
            settings, sessions, [command(t, "statement", partner_id="agent-1", period="2099-01")]
        )
        assert early.error is not None and early.error["code"] == "period_not_ended"

    # one tenant sees nothing of another's: the other tenant's cust-a earned nothing from
    # acme's invoices, and acme's statements are not the other's
    assert await entries(sessions, other, "agent-1") == []
    async with sessions() as db:
        repo = PartnerRepository(db)
        assert await repo.statement(other, may.statement_id) is None
        assert await repo.statements(other, "agent-1") == []
        row = await repo.statement(t, may.statement_id)
        assert row is not None and (row.amount_paid, row.status) == (225, "paid")


async def test_real_invoices_paid_and_credited_through_invoicing_and_payments(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    """The invoicing, payments and partners workers and the ingress: a one-off invoice with
    tax, paid by bank transfer, then partly credited; the topics replayed earn nothing more."""
    t = tenant.tenant_id
    s = settings.model_copy(update={"invoicing_tick_s": 0.1})
    async with stack(s, tenant, build_invoicing(s), build_payments(s), build(s)) as st:
        setup = [
            command(t, "partner", partner_id="agent-1", name="Agent One", tier="gold"),
            command(t, "rule", key="std", partner_tier="gold", kind="percent", percent="0.1"),
            command(t, "attribute", customer="bistro", partner_id="agent-1",
                    effective_from=datetime(2020, 1, 1, tzinfo=UTC)),
        ]  # fmt: skip
        assert {o.status for o in await run_commands(s, sessions, setup)} == {"succeeded"}
        await customer(st, "bistro", "USD", tax_rate="0.19")
        accepted = await create(st, {"customer": "bistro", "lines": USD_LINES, "finalize": True})
        assert (await outcome(st, accepted))["status"] == "succeeded"
        invoice_id = accepted["invoice_id"]
        inv = await st.api.get(f"/v1/invoices/{invoice_id}")
        # subtotal 737.21, tax 115.97, total 853.18: N = 737.21; 10 % = 73.721 → 73.72
        assert (inv["subtotal"], inv["tax"], inv["total"]) == (73721, 11597, 85318)
        await pay_offline(st, invoice_id, 85318)
        await wait_entries(sessions, t, "agent-1", 1)
        [accrued] = await entries(sessions, t, "agent-1")
        assert (accrued.invoice_id, accrued.amount, accrued.base) == (invoice_id, 7372, "73721")
        # a credit note of 100.00 + 19.00 tax on the setup fee, paid already: credited to the
        # balance. Its net part 119.00 * 100/119 = 100.00; K = 637.21;
        # target round(73.72 * 637.21 / 737.21) = round(63.7201…) = 63.72: 10.00 reversed
        cn = await note(st, invoice_id, {"reason": "order_change", "settle": "credit",
                                         "lines": [{"line": 0, "amount": 10000}]})  # fmt: skip
        assert cn["status"] == "succeeded", cn
        await wait_entries(sessions, t, "agent-1", 2)
        got = [(e.kind, e.amount, e.cause) for e in await entries(sessions, t, "agent-1")]
        assert got == [("accrued", 7372, "invoice_paid"), ("reversed", 1000, "credit_note")]

        # replaying both topics: the records as they were, and copies under new ids
        for topic in (topics.EVENTS_INVOICING, topics.EVENTS_PAYMENTS):
            records, _ = await read_all(s, topic)
            async with producer(s) as p:
                for r in records:
                    copy = json.loads(r.value)
                    copy["id"] = f"{copy['id']}-replayed"
                    await p.send(topic, r.value, key=r.key)
                    await p.send(topic, json.dumps(copy).encode(), key=r.key)
                await p.flush()
        await caught_up(s)
        again = [(e.kind, e.amount, e.cause) for e in await entries(sessions, t, "agent-1")]
        assert again == got
