"""Credit notes as the API shows them (``CreditNoteData``, as their events carry them)."""

from __future__ import annotations

from schemas.credit_notes import CreditNoteData
from storage.invoicing import InvoicingRepository
from storage.invoicing.credit_notes import CreditNoteRepository
from workers.invoicing.credit_notes import note_data
from workers.runtime import Tx


async def find_credit_notes(
    tx: Tx,
    tenant_id: str,
    *,
    id: str | None = None,
    invoice_id: str | None = None,
    customer: str | None = None,
    limit: int = 100,
) -> list[CreditNoteData]:
    """One note (``id``), or the notes of an invoice and/or a customer (newest first)."""
    repo = tx.repo(CreditNoteRepository)
    if id is not None:
        note = await repo.note(tenant_id, id)
        if note is None:
            return []
        customers = await tx.repo(InvoicingRepository).customers([note.customer_id])
        found = [(note, customers[note.customer_id].external_id)]
    else:
        found = await repo.search(
            tenant_id, invoice_id=invoice_id, customer_external_id=customer, limit=limit
        )
    if not found:
        return []
    invoicing = tx.repo(InvoicingRepository)
    invoices = {}
    for invoice_key in {n.invoice_id for n, _ in found}:
        invoice = await invoicing.invoice(tenant_id, invoice_key)
        assert invoice is not None
        invoices[invoice_key] = invoice
    lines = await repo.lines(tenant_id, [n.id for n, _ in found])
    return [note_data(n, lines[n.id], invoices[n.invoice_id], ext) for n, ext in found]
