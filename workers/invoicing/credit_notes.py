"""Credit notes against finalized invoices: issuing and voiding them, each in the one
transaction of its command (the arithmetic is in ``credit_notes_service.py``, pure).

Locks, in this order: the invoice row, the credit-note counter row of the year (gapless
numbers: a failed command rolls its number back), the customer's row (credits). Every
ledger entry and grant is keyed by the note, so a replayed command writes nothing twice: a
note id seen before answers with the note as it is.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from schemas.credit_notes import (
    CreditNoteData,
    CreditNoteIssued,
    CreditNoteLine,
    CreditNoteVoided,
    IssueCreditNote,
    VoidCreditNote,
)
from schemas.invoicing import InvoicePaid
from schemas.receipts import receipt_id
from schemas.taxes import TaxAmount
from storage.invoicing import Customer, Invoice, InvoicingRepository
from storage.invoicing.credit_notes import CreditNote, CreditNoteLineRow, CreditNoteRepository
from storage.invoicing.credits import CreditRepository
from workers.invoicing import credit_notes_service as cns
from workers.invoicing import credits, ledger, service, views
from workers.invoicing.base import Handler, Result, emit
from workers.invoicing.errors import Conflict, InvalidTransition, NotFound
from workers.runtime import Tx

CREDITABLE = ("finalized", "paid", "uncollectible")


def grant_id_of(note_id: str) -> str:
    """The id of the grant a note (settle ``credit``) gives the customer's balance."""
    gid = f"cn-{note_id}"
    return gid if len(gid) <= 64 else "cn-" + hashlib.sha256(note_id.encode()).hexdigest()[:61]


def note_data(
    note: CreditNote,
    lines: list[CreditNoteLineRow],
    invoice: Invoice,
    customer: str,
) -> CreditNoteData:
    return CreditNoteData(
        credit_note_id=note.id,
        number=note.number,
        receipt_id=receipt_id(note.tenant_id, "credit_note", note.id),
        invoice_id=note.invoice_id,
        invoice_number=invoice.number,
        customer=customer,
        currency=note.currency,
        reason=note.reason,
        memo=note.memo,
        status=note.status,
        settle=note.settle,
        lines=[
            CreditNoteLine(
                line=ln.line,
                description=ln.description,
                amount=ln.amount,
                tax_rate=ln.tax_rate,
                tax=ln.tax,
                taxes=taxes_of(ln.taxes),
                line_amount=None if ln.line is None else line_amount(ln),
            )
            for ln in lines
        ],
        subtotal=note.subtotal,
        tax=note.tax,
        tax_breakdown=taxes_of(note.tax_breakdown),
        total=note.total,
        amount_reducing_due=note.amount_reducing_due,
        amount_credits_returned=note.amount_credits_returned,
        refund_amount=note.refund_amount,
        amount_credited_to_balance=note.amount_credited_to_balance,
        grant_id=note.grant_id,
        invoice_amount_due=amount_due(invoice),
        issued_at=note.issued_at,
        voided_at=note.voided_at,
        void_reason=note.void_reason,
    )


def taxes_of(stored: list[dict[str, Any]] | None) -> list[TaxAmount]:
    """A stored breakdown (JSON) as ``TaxAmount``s."""
    return [TaxAmount.model_validate(t) for t in stored or []]


def line_amount(row: CreditNoteLineRow) -> int:
    """What a note line took off its invoice line: its amount, plus its inclusive tax."""
    return row.amount + sum(t.tax for t in taxes_of(row.taxes) if t.inclusive)


def amount_due(invoice: Invoice) -> int:
    if invoice.status not in CREDITABLE or invoice.status == "paid":
        return 0
    return max(invoice.total - invoice.amount_paid - invoice.amount_credited, 0)


def _result(note: CreditNote) -> Result:
    return {
        "credit_note_id": note.id,
        "number": note.number,
        "status": note.status,
        "total": note.total,
        "amount_reducing_due": note.amount_reducing_due,
        "amount_credits_returned": note.amount_credits_returned,
        "refund_amount": note.refund_amount,
        "amount_credited_to_balance": note.amount_credited_to_balance,
    }


def _charge_lines(rows: list[Any]) -> list[cns.ChargeLine]:
    out = []
    for r in rows:
        taxes = tuple(taxes_of(r.taxes))
        out.append(cns.ChargeLine(r.position, r.description, r.amount, r.kind, r.grant_id,
                                  r.tax_rate, r.applies_to, taxes))  # fmt: skip
    return out


async def _credits_left(tx: Tx, invoice: Invoice) -> list[tuple[str, int]]:
    """What each grant that paid ``invoice`` has not had back (in the order applied)."""
    entries = await tx.repo(CreditRepository).entries_of_invoice(invoice.tenant_id, invoice.id)
    left: dict[str, int] = {}
    for e in entries:
        if e.kind in ("applied", "reversed"):
            left[e.grant_id] = left.get(e.grant_id, 0) - e.amount
    return [(g, a) for g, a in left.items() if a > 0]


async def _return_credits(
    tx: Tx,
    invoice: Invoice,
    customer: Customer,
    taken: list[tuple[str, int]],
    note_id: str,
    at: datetime,
    cause: IssueCreditNote,
) -> None:
    """Reversed entries (keyed per note) give ``taken`` back to the grants; a grant that
    ended meanwhile expires it again at once (as ``ledger.return_credits`` does)."""
    repo = tx.repo(CreditRepository)
    grants = {g.id: g for g in await repo.grants(invoice.tenant_id, [customer.id])}
    kinds = await repo.kinds(invoice.tenant_id, {g for g, _ in taken})
    rows = []
    for grant_id, amount in taken:
        g = grants[grant_id]
        rows.append(
            credits.entry(
                invoice.tenant_id, grant_id, customer.id, "reversed", amount, at,
                f"reversed:{grant_id}:{invoice.id}:{note_id}", invoice_id=invoice.id,
                reason=f"credit note {note_id}",
            )
        )  # fmt: skip
        if kinds.get(grant_id, set()) & {"expired", "voided"} or (
            g.expires_at is not None and g.expires_at <= at
        ):
            rows.append(
                credits.entry(
                    invoice.tenant_id, grant_id, customer.id, "expired", -amount, at,
                    f"expired:{grant_id}:{invoice.id}:{note_id}", invoice_id=invoice.id,
                    reason="returned by a credit note after the grant ended",
                )
            )  # fmt: skip
    await ledger.write_entries(tx, rows, grants, customer.external_id, cause)


async def _grant_balance(
    tx: Tx, invoice: Invoice, customer: Customer, note: dict[str, Any], cause: IssueCreditNote
) -> None:
    """The customer's balance gets what the note credits (a grant of source credit_note)."""
    repo = tx.repo(CreditRepository)
    columns = {
        "tenant_id": invoice.tenant_id,
        "id": note["grant_id"],
        "customer_id": customer.id,
        "currency": invoice.currency,
        "amount": note["amount_credited_to_balance"],
        "source": "credit_note",
        "priority": 50,
        "effective_at": note["issued_at"],
        "expires_at": None,
        "scope": None,
        "rollover": None,
        "purchase_amount": None,
        "invoice_id": None,
        "rolled_over_from": None,
        "description": f"Credit note {note['number']}",
    }
    grant = await repo.add_grant(**columns)
    if grant is None:
        raise Conflict(f"a credit grant {note['grant_id']!r} exists already", field="id")
    entry = credits.entry(
        invoice.tenant_id, grant.id, customer.id, "granted", grant.amount, grant.effective_at,
        f"granted:{grant.id}",
    )  # fmt: skip
    await repo.add_entries([entry])
    await ledger.emit_grant(tx, grant, customer.external_id, note["issued_at"], cause)


async def issue_credit_note(cmd: IssueCreditNote, tx: Tx) -> Result:
    """Issues a note against a finalized, paid or uncollectible invoice (never more than
    remains creditable); emits credit_note.issued (and invoice.paid when nothing is due any
    more). The same note id again answers with the note; another invoice under it fails."""
    spec, tenant, at = cmd.data, cmd.tenantid, cmd.time
    repo = tx.repo(InvoicingRepository)
    notes = tx.repo(CreditNoteRepository)
    invoice = await repo.invoice(tenant, spec.invoice_id, lock=True)
    existing = await notes.note(tenant, spec.id)
    if existing is not None:
        if existing.invoice_id != spec.invoice_id:
            raise Conflict(f"credit note {spec.id!r} is of another invoice", field="id")
        return _result(existing)
    if invoice is None:
        raise NotFound(f"no invoice {spec.invoice_id!r}", field="invoice_id")
    if invoice.status not in CREDITABLE:
        raise InvalidTransition(
            f"a {invoice.status} invoice takes no credit notes (only finalized, paid or "
            "uncollectible ones)",
            field="invoice_id",
        )
    rows = (await repo.lines([invoice.id]))[invoice.id]
    earlier = [n for n in await notes.of_invoice(tenant, invoice.id) if n.status != "void"]
    credited: dict[int, int] = {}
    earlier_lines = await notes.lines(tenant, [n.id for n in earlier])
    flat = [ln for lns in earlier_lines.values() for ln in lns]
    for ln in flat:
        if ln.line is not None:
            credited[ln.line] = credited.get(ln.line, 0) + line_amount(ln)
    before = cns.Reversed.of((ln.line, taxes_of(ln.taxes)) for ln in flat)
    breakdown = taxes_of(invoice.tax_breakdown)
    charged = invoice.total + invoice.credits
    remaining = charged - sum(n.total for n in earlier)
    if spec.lines is not None:
        requested = [(ln.line, ln.amount) for ln in spec.lines]
        note = cns.by_lines(
            requested, _charge_lines(rows), credited, invoice.tax_rate, invoice.currency,
            invoice.rounding, remaining, breakdown=breakdown, earlier=before,
        )  # fmt: skip
    else:
        assert spec.amount is not None
        note = cns.by_amount(
            spec.amount, invoice.tax_rate, invoice.rounding, remaining,
            f"Credit of invoice {invoice.number}", breakdown=breakdown, charged=charged,
            earlier=before,
        )  # fmt: skip
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    await tx.repo(CreditRepository).lock_customers([customer.id])
    left = await _credits_left(tx, invoice)
    cash_given = sum(n.refund_amount + n.amount_credited_to_balance for n in earlier)
    refunded_elsewhere = max(invoice.amount_refunded - sum(n.refund_amount for n in earlier), 0)
    cash_left = invoice.amount_paid - cash_given - refunded_elsewhere
    due = amount_due(invoice)
    out = cns.outcome(note.total, due, sum(a for _, a in left), cash_left, spec.settle)
    n = await notes.next_number(tenant, at.year)
    config = views.config_of(await repo.config(tenant))
    columns: dict[str, Any] = {
        "tenant_id": tenant,
        "id": spec.id,
        "number": service.invoice_number(config.credit_note_prefix, at.year, n),
        "invoice_id": invoice.id,
        "customer_id": customer.id,
        "currency": invoice.currency,
        "reason": spec.reason,
        "memo": spec.memo,
        "settle": spec.settle,
        "status": "issued",
        "subtotal": note.subtotal,
        "tax": note.tax,
        "tax_breakdown": [t.model_dump(mode="json") for t in note.breakdown],
        "total": note.total,
        "amount_reducing_due": out.reduce_due,
        "amount_credits_returned": out.credits_returned,
        "refund_amount": out.refund,
        "amount_credited_to_balance": out.to_balance,
        "grant_id": grant_id_of(spec.id) if out.to_balance else None,
        "issued_at": at,
    }
    line_rows = [
        {
            "tenant_id": tenant,
            "credit_note_id": spec.id,
            "position": i,
            "line": ln.line,
            "description": ln.description,
            "amount": ln.amount,
            "tax_rate": ln.tax_rate,
            "tax": ln.tax,
            "taxes": [t.model_dump(mode="json") for t in ln.taxes],
        }
        for i, ln in enumerate(note.lines)
    ]
    await notes.add(columns, line_rows)
    paid = out.reduce_due > 0 and out.reduce_due == due
    if out.reduce_due:
        notes.credit_invoice(invoice, out.reduce_due, at if paid else None)
    if out.credits_returned:
        taken = cns.take_back(left, out.credits_returned)
        await _return_credits(tx, invoice, customer, taken, spec.id, at, cmd)
    if out.to_balance:
        await _grant_balance(tx, invoice, customer, columns, cmd)
    row = await notes.note(tenant, spec.id)
    assert row is not None
    lines = (await notes.lines(tenant, [spec.id]))[spec.id]
    data = note_data(row, lines, invoice, customer.external_id)
    emit(tx, CreditNoteIssued(source=service.SOURCE, subject=spec.id, data=data, **cmd.caused()),
         customer.external_id)  # fmt: skip
    if paid:
        view = views.invoice_data(invoice, customer.external_id, rows)
        emit(tx, service.invoice_event(InvoicePaid, view, **cmd.caused()), customer.external_id)
    return _result(row)


async def void_credit_note(cmd: VoidCreditNote, tx: Tx) -> Result:
    """Voids a note that refunded nothing and returned no prepaid credits: what it took off
    the amount due is due again (refused once that made the invoice paid), the balance it
    granted is voided (refused once used); emits credit_note.voided. Its number stays."""
    spec, tenant = cmd.data, cmd.tenantid
    notes = tx.repo(CreditNoteRepository)
    repo = tx.repo(InvoicingRepository)
    found = await notes.note(tenant, spec.credit_note_id)
    if found is None:
        raise NotFound(f"no credit note {spec.credit_note_id!r}", field="credit_note_id")
    invoice = await repo.invoice(tenant, found.invoice_id, lock=True)
    assert invoice is not None
    note = await notes.note(tenant, spec.credit_note_id, lock=True)
    assert note is not None
    if note.status == "void":
        return _result(note)
    field = "credit_note_id"
    if note.refund_amount:
        raise Conflict(f"credit note {note.number} refunded {note.refund_amount}", field=field)
    if note.amount_credits_returned:
        raise Conflict(
            f"credit note {note.number} returned {note.amount_credits_returned} of prepaid "
            "credits to their grants",
            field=field,
        )
    if note.amount_reducing_due and invoice.status == "paid":
        raise Conflict(
            f"credit note {note.number} settled invoice {invoice.number}, which is paid",
            field=field,
        )
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    if note.grant_id is not None:
        credit = tx.repo(CreditRepository)
        await credit.lock_customers([customer.id])
        grant = await credit.grant(tenant, note.grant_id)
        assert grant is not None
        balance, _ = await ledger.grant_state(tx, grant, cmd.time)
        if balance != grant.amount:
            raise Conflict(
                f"the credit of note {note.number} was used ({grant.amount - balance} of "
                f"{grant.amount})",
                field=field,
            )
        entry = credits.entry(
            tenant, grant.id, customer.id, "voided", -balance, max(cmd.time, grant.effective_at),
            f"voided:{grant.id}", reason=f"credit note {note.number} voided",
        )  # fmt: skip
        await credit.add_entries([entry])
        await ledger.emit_grant(tx, grant, customer.external_id, cmd.time, cmd, voided=True)
    if note.amount_reducing_due:
        notes.credit_invoice(invoice, -note.amount_reducing_due, None)
    notes.void(note, cmd.time, spec.reason)
    lines = (await notes.lines(tenant, [note.id]))[note.id]
    data = note_data(note, lines, invoice, customer.external_id)
    emit(tx, CreditNoteVoided(source=service.SOURCE, subject=note.id, data=data, **cmd.caused()),
         customer.external_id)  # fmt: skip
    return _result(note)


async def has_open_notes(tx: Tx, invoice: Invoice) -> bool:
    """Whether ``invoice`` has credit notes that are not void (it cannot be voided)."""
    notes = await tx.repo(CreditNoteRepository).of_invoice(invoice.tenant_id, invoice.id)
    return any(n.status != "void" for n in notes)


COMMANDS: dict[type[Any], Handler] = {
    IssueCreditNote: issue_credit_note,
    VoidCreditNote: void_credit_note,
}
