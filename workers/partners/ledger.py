"""The commission ledger kept from invoicing and payments events: an accrual when an
attributed invoice is paid, a reversal when a credit note or a refund takes back part of
what was paid, a restoration (an accrual again) when such a credit note is voided. Storage
and the pure service, in the consumer's transaction.

Replays change nothing: an invoice accrues once (``commission_invoices`` by invoice id), a
cause is counted once (``commission_causes`` by kind and id) and voided once (its
``voided_at``), a ledger entry is written once (its id derived from invoice, rule and
cause)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from schemas import topics
from schemas.credit_notes import CreditNoteIssued, CreditNoteVoided
from schemas.envelope import CloudEvent
from schemas.invoicing import InvoicePaid
from schemas.partners import Cause, CommissionData, CommissionRuleSpec, RuleKind, period_of
from schemas.payments import PaymentRefunded
from storage.partners import (
    CommissionAccrualRow,
    CommissionCauseRow,
    CommissionEntryRow,
    CommissionInvoiceRow,
    PartnerRepository,
)
from workers.partners import service
from workers.runtime import Tx

CREDIT_NOTE_REFUND_PREFIX = "cn_"  # payments' refunds made by a credit note (counted by it)


def entry_row(tenant_id: str, d: CommissionData) -> CommissionEntryRow:
    return CommissionEntryRow(
        tenant_id=tenant_id,
        entry_id=d.entry_id,
        kind=d.kind,
        partner_id=d.partner_id,
        customer=d.customer,
        invoice_id=d.invoice_id,
        invoice_number=d.invoice_number,
        rule=d.rule,
        rule_kind=d.rule_kind,
        currency=d.currency,
        base=d.base_minor,
        amount=d.amount,
        period=d.period,
        effective_at=d.effective_at,
        cause=d.cause,
        cause_id=d.cause_id,
        accrual_id=d.accrual_id,
        statement_id=None,
    )


async def _write(tx: Tx, tenant_id: str, entries: list[CommissionData], cause: CloudEvent) -> None:
    """Ledger entries and their events (only those not written before)."""
    written = set(
        await tx.repo(PartnerRepository).add_entries([entry_row(tenant_id, d) for d in entries])
    )
    for d in entries:
        if d.entry_id in written:
            tx.emit(
                service.commission_event(d, cause),
                topic=topics.EVENTS_PARTNERS,
                key=service.key(tenant_id, d.partner_id),
            )


def _reduction(row: CommissionCauseRow) -> service.Reduction:
    kind: Cause = "credit_note" if row.cause == "credit_note" else "refund"
    return service.Reduction(kind, row.cause_id, row.amount, row.subtotal, row.total)


def _facts(inv: CommissionInvoiceRow, period: str) -> service.EntryFacts:
    return service.EntryFacts(
        tenant_id=inv.tenant_id,
        partner_id=inv.partner_id,
        customer=inv.customer,
        invoice_id=inv.invoice_id,
        invoice_number=inv.invoice_number,
        currency=inv.currency,
        period=period,
    )


async def invoice_paid(tx: Tx, event: InvoicePaid) -> None:
    """Accrues the commissions of a paid invoice attributed to a partner (once)."""
    t, d = event.tenantid, event.data
    repo = tx.repo(PartnerRepository)
    if await repo.paid_invoice(t, d.invoice_id) is not None:
        return  # a replay
    partner_id = await repo.partner_of(t, d.customer, d.period_start)
    if partner_id is None:
        return
    partner = await repo.partner(t, partner_id)
    if partner is None:
        return
    plan = await repo.plan_of(t, d.subscription_id) if d.subscription_id else None
    invoice = service.paid_invoice(d, plan)
    k0 = invoice.paid_net
    if k0 <= 0:
        return
    period = period_of(event.time)
    # the month's row first: every accrual of this partner, month and currency waits here
    month = await repo.lock_period(t, partner_id, period, d.currency)
    row = CommissionInvoiceRow(
        tenant_id=t,
        invoice_id=d.invoice_id,
        invoice_number=d.number,
        partner_id=partner_id,
        customer=d.customer,
        currency=d.currency,
        net=invoice.net,
        total=invoice.total,
        paid_net=service.exact_text(k0),
        period=period,
        paid_at=event.time,
    )
    if not await repo.add_paid_invoice(row):
        return  # accrued concurrently by another copy of the event
    rules = [
        service.rule_of(CommissionRuleSpec.model_validate(r.spec))
        for r in await repo.rules(t, partner_tier=partner.tier)
    ]
    result = service.accrue(
        invoice,
        rules,
        service.parse_exact(month.volume),
        {k: int(v) for k, v in month.accrued.items()},
    )
    await repo.save_period(month, service.exact_text(result.volume), result.accrued)
    facts = _facts(row, period)
    accrued = [a for a in result.accruals if a.amount > 0]
    entries = [service.accrual_data(facts, a, event.time) for a in accrued]
    await repo.add_accruals(
        [
            CommissionAccrualRow(
                tenant_id=t,
                invoice_id=d.invoice_id,
                rule=a.rule.key,
                rule_kind=a.rule.kind,
                entry_id=e.entry_id,
                amount=a.amount,
                reversed=0,
            )
            for a, e in zip(accrued, entries, strict=True)
        ]
    )
    await _write(tx, t, entries, event)
    # credit notes and refunds that arrived before the payment are counted from the start
    early = [_reduction(c) for c in await repo.causes(t, d.invoice_id)]
    if early:
        await _reverse(tx, row, [], early, event.time, event)


async def _reverse(
    tx: Tx,
    inv: CommissionInvoiceRow,
    applied: list[service.Reduction],
    new: list[service.Reduction],
    at: datetime,
    cause: CloudEvent,
) -> None:
    repo = tx.repo(PartnerRepository)
    accruals = await repo.accruals(inv.tenant_id, inv.invoice_id, lock=True)
    if not accruals:
        return
    state = {a.rule: (a.amount, a.reversed) for a in accruals}
    kinds = {a.rule: cast(RuleKind, a.rule_kind) for a in accruals}
    k0 = service.parse_exact(inv.paid_net)
    out, done = service.reversals(state, k0, inv.net, inv.total, applied, new)
    if not out:
        return
    effective_at = max(at, inv.paid_at)
    facts = _facts(inv, period_of(effective_at))
    entries = [service.reversal_data(facts, r, kinds[r.rule], effective_at) for r in out]
    for rule, total in done.items():
        if total != state[rule][1]:
            await repo.set_reversed(inv.tenant_id, inv.invoice_id, rule, total)
    await _write(tx, inv.tenant_id, entries, cause)


async def reduced(
    tx: Tx,
    event: CloudEvent,
    reduction: service.Reduction,
    invoice_id: str,
    customer: str,
) -> None:
    """Keeps a credit note or refund of an attributed customer's invoice once, and reverses
    what it takes back of the invoice's commissions (if they have accrued yet)."""
    t = event.tenantid
    repo = tx.repo(PartnerRepository)
    if not await repo.attributed_customers([(t, customer)]):
        return
    kept = await repo.add_cause(
        t,
        reduction.cause,
        reduction.cause_id,
        invoice_id,
        reduction.amount,
        reduction.subtotal,
        reduction.total,
        event.time,
    )
    if not kept:
        return  # a replay: counted before
    inv = await repo.paid_invoice(t, invoice_id)
    if inv is None:
        return  # kept: counted when the invoice accrues
    await repo.accruals(t, invoice_id, lock=True)  # serialise with other causes first
    causes = [_reduction(c) for c in await repo.causes(t, invoice_id)]
    applied = [c for c in causes if (c.cause, c.cause_id) != (reduction.cause, reduction.cause_id)]
    await _reverse(tx, inv, applied, [reduction], event.time, event)


async def credit_note_issued(tx: Tx, event: CreditNoteIssued) -> None:
    d = event.data
    part = d.refund_amount + d.amount_credited_to_balance
    reduction = service.Reduction("credit_note", d.credit_note_id, part, d.subtotal, d.total)
    await reduced(tx, event, reduction, d.invoice_id, d.customer)


async def credit_note_voided(tx: Tx, event: CreditNoteVoided) -> None:
    """A voided credit note of an attributed customer's invoice is no longer counted: what it
    reversed of the invoice's commissions accrues again (once; a replay, or a note never
    kept, changes nothing). Before the invoice accrues, it is simply not counted then."""
    t, d = event.tenantid, event.data
    repo = tx.repo(PartnerRepository)
    if not await repo.attributed_customers([(t, d.customer)]):
        return
    inv = await repo.paid_invoice(t, d.invoice_id)
    accruals = [] if inv is None else await repo.accruals(t, d.invoice_id, lock=True)
    voided = await repo.void_cause(t, "credit_note", d.credit_note_id, event.time)
    if voided is None or inv is None or not accruals:
        return
    state = {a.rule: (a.amount, a.reversed) for a in accruals}
    kinds = {a.rule: cast(RuleKind, a.rule_kind) for a in accruals}
    remaining = [_reduction(c) for c in await repo.causes(t, d.invoice_id)]
    k0 = service.parse_exact(inv.paid_net)
    out, done = service.restorations(state, k0, inv.net, inv.total, remaining, _reduction(voided))
    if not out:
        return
    effective_at = max(event.time, inv.paid_at)
    facts = _facts(inv, period_of(effective_at))
    entries = [service.restoration_data(facts, r, kinds[r.rule], effective_at) for r in out]
    for rule, total in done.items():
        if total != state[rule][1]:
            await repo.set_reversed(t, d.invoice_id, rule, total)
    await _write(tx, t, entries, event)


async def payment_refunded(tx: Tx, event: PaymentRefunded) -> None:
    d = event.data
    if d.refund_id.startswith(CREDIT_NOTE_REFUND_PREFIX):
        return  # a credit note's refund: its credit note counts it
    reduction = service.Reduction("refund", d.refund_id, d.amount)
    await reduced(tx, event, reduction, d.invoice_id, d.customer)
