"""Partners test helpers: synthetic invoicing and payments events (as those workers publish
them), partners commands on their topic, and reads of the ledger and statements."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from schemas import topics
from schemas.credit_notes import CreditNoteData, CreditNoteIssued
from schemas.envelope import CloudEvent
from schemas.invoicing import InvoiceData, InvoiceLine, InvoicePaid
from schemas.partners import (
    AttributeCustomer,
    AttributionSpec,
    CommissionRuleSpec,
    IssueCommissionStatement,
    PartnerSpec,
    PayoutSpec,
    RecordCommissionPayout,
    StatementSpec,
    UpsertCommissionRule,
    UpsertPartner,
)
from schemas.payments import PaymentRefunded, RefundData
from storage.commands import CommandRecord
from storage.partners import CommissionEntryRow, PartnerRepository, StatementRow
from tests.integration.support import Sessions, command_outcome, producer
from workers.settings import Settings

Line = tuple[str, str, int]  # (price_key, kind, amount): kind "discount" / "credit" or a charge


def invoice_paid(
    tenant: str,
    customer: str,
    invoice_id: str,
    *,
    currency: str,
    lines: list[Line],
    tax: int,
    period: tuple[datetime, datetime],
    paid_at: datetime,
    amount_paid: int | None = None,
    subscription_id: str | None = None,
) -> InvoicePaid:
    made = [
        InvoiceLine(
            price_key=key,
            kind=kind,
            description=key,
            period_start=period[0],
            period_end=period[1],
            quantity=1,  # type: ignore[arg-type]
            tiers=[],
            proration=1,  # type: ignore[arg-type]
            minimum_applied=False,
            amount=amount,
            grant_id="g1" if kind == "credit" else None,
            discount_id="d1" if kind == "discount" else None,
        )
        for key, kind, amount in lines
    ]
    subtotal = sum(a for _, k, a in lines if k not in ("discount", "credit"))
    discount = -sum(a for _, k, a in lines if k == "discount")
    credits = -sum(a for _, k, a in lines if k == "credit")
    total = subtotal - discount - credits + tax
    paid = total if amount_paid is None else amount_paid
    data = InvoiceData(
        invoice_id=invoice_id,
        number=f"INV-{invoice_id}",
        status="paid",
        customer=customer,
        subscription_id=subscription_id,
        currency=currency,
        period_start=period[0],
        period_end=period[1],
        subtotal=subtotal,
        discount=discount,
        credits=credits,
        tax=tax,
        total=total,
        amount_paid=paid,
        amount_credited=total - paid,
        amount_due=0,
        lines=made,
    )
    return InvoicePaid(source="tests", tenantid=tenant, subject=invoice_id, time=paid_at, data=data)


def refunded(
    tenant: str,
    customer: str,
    refund_id: str,
    invoice_id: str,
    amount: int,
    at: datetime,
    currency: str = "USD",
) -> PaymentRefunded:
    data = RefundData(
        refund_id=refund_id,
        payment_id=f"pay-{invoice_id}",
        invoice_id=invoice_id,
        customer=customer,
        amount=amount,
        amount_refunded=amount,
        currency=currency,
    )
    return PaymentRefunded(source="tests", tenantid=tenant, subject=invoice_id, time=at, data=data)


def credit_note(
    tenant: str,
    customer: str,
    cn_id: str,
    invoice_id: str,
    *,
    subtotal: int,
    tax: int,
    refund: int,
    at: datetime,
    currency: str = "USD",
) -> CreditNoteIssued:
    data = CreditNoteData(
        credit_note_id=cn_id,
        number=f"CN-{cn_id}",
        invoice_id=invoice_id,
        customer=customer,
        currency=currency,
        reason="other",
        status="issued",
        settle="refund",
        lines=[],
        subtotal=subtotal,
        tax=tax,
        total=subtotal + tax,
        amount_reducing_due=subtotal + tax - refund,
        amount_credits_returned=0,
        refund_amount=refund,
        amount_credited_to_balance=0,
        invoice_amount_due=0,
        issued_at=at,
    )
    return CreditNoteIssued(source="tests", tenantid=tenant, subject=cn_id, time=at, data=data)


def topic_of(event: CloudEvent) -> str:
    if isinstance(event, PaymentRefunded):
        return topics.EVENTS_PAYMENTS
    return topics.EVENTS_INVOICING


async def send_events(settings: Settings, events: list[CloudEvent]) -> None:
    async with producer(settings) as p:
        for e in events:
            data: Any = e.data
            key = topics.partition_key(e.tenantid, data.customer).encode()
            await p.send(topic_of(e), e.to_json(), key=key)
        await p.flush()


def command(tenant: str, what: str, /, **data: Any) -> CloudEvent:
    make: dict[str, tuple[type[CloudEvent], type[Any]]] = {
        "partner": (UpsertPartner, PartnerSpec),
        "rule": (UpsertCommissionRule, CommissionRuleSpec),
        "attribute": (AttributeCustomer, AttributionSpec),
        "statement": (IssueCommissionStatement, StatementSpec),
        "payout": (RecordCommissionPayout, PayoutSpec),
    }
    cls, spec = make[what]
    return cls(source="tests", tenantid=tenant, data=spec.model_validate(data))


async def send_commands(settings: Settings, commands: list[CloudEvent]) -> list[str]:
    async with producer(settings) as p:
        for c in commands:
            await p.send(topics.COMMANDS_PARTNERS, c.to_json(), key=c.tenantid.encode())
        await p.flush()
    return [c.id for c in commands]


async def run_commands(
    settings: Settings, sessions: Sessions, commands: list[CloudEvent]
) -> list[CommandRecord]:
    ids = await send_commands(settings, commands)
    return [
        await command_outcome(sessions, c.tenantid, i, 30)
        for c, i in zip(commands, ids, strict=True)
    ]


async def entries(sessions: Sessions, tenant: str, partner_id: str) -> list[CommissionEntryRow]:
    async with sessions() as db:
        return await PartnerRepository(db).entries(tenant, partner_id, limit=10_000)


async def entry_count(sessions: Sessions) -> int:
    async with sessions() as db:
        return int(await db.scalar(select(func.count()).select_from(CommissionEntryRow)) or 0)


async def statements(sessions: Sessions, tenant: str, partner_id: str) -> list[StatementRow]:
    async with sessions() as db:
        return await PartnerRepository(db).statements(tenant, partner_id)
