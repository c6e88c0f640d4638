"""The invoicing documents receipts attest, as their events carried them, for
``billstream receipts audit``: finalized invoices (``InvoiceData``, what
``invoice.finalized`` says) and credit notes (``CreditNoteData``, what
``credit_note.issued`` says), by id or by pages of ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from schemas.credit_notes import CreditNoteData
from schemas.invoicing import InvoiceData
from storage.invoicing import InvoicingRepository
from storage.invoicing.attested import AttestedDocuments
from storage.invoicing.credit_notes import CreditNoteRepository
from workers.invoicing.credit_notes import note_data
from workers.invoicing.views import invoice_data
from workers.runtime import Tx

#: ids per page of ``finalized_documents``
PAGE = 500


async def attested_invoices(tx: Tx, tenant_id: str, ids: Sequence[str]) -> dict[str, InvoiceData]:
    """These finalized (numbered) invoices of the tenant by id, as the API shows them now;
    an id with no such invoice is left out."""
    found = await tx.repo(AttestedDocuments).invoices(tenant_id, ids)
    lines = await tx.repo(InvoicingRepository).lines([i.id for i, _ in found])
    return {i.id: invoice_data(i, ext, lines[i.id]) for i, ext in found}


async def attested_credit_notes(
    tx: Tx, tenant_id: str, ids: Sequence[str]
) -> dict[str, CreditNoteData]:
    """These credit notes of the tenant by id, as the API shows them now; an id with no
    such note is left out."""
    found = await tx.repo(AttestedDocuments).notes(tenant_id, ids)
    lines = await tx.repo(CreditNoteRepository).lines(tenant_id, [n.id for n, _, _ in found])
    return {n.id: note_data(n, lines[n.id], i, ext) for n, i, ext in found}


async def finalized_documents(
    tx: Tx,
    tenant_id: str,
    kind: Literal["invoice", "credit_note"],
    after: str | None = None,
    limit: int = PAGE,
) -> tuple[list[str], str | None]:
    """The ids of the tenant's next ``limit`` finalized invoices or credit notes after the
    cursor ``after``, and the cursor to read on from (None: that was the last page)."""
    repo = tx.repo(AttestedDocuments)
    page = await (repo.invoice_page if kind == "invoice" else repo.note_page)(
        tenant_id, after, limit
    )
    return [i for _, i in page], (page[-1][0] if len(page) == limit else None)
