"""One-off invoices: creating one (a draft, or finalized at once) and finalizing a draft
(docs/one-off-invoices.md). The lines and the idempotency rules are in
``one_off_service.py`` (pure); finalizing shares ``finalizing.settle`` with billing runs.

A retried request bills once: the invoice's id and its tenant's idempotency key are both
unique in the database, so a replayed command, a retry after kill -9 or a second request
with the same key inserts nothing and answers with the invoice it named first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.envelope import CloudEvent
from schemas.invoicing import InvoiceCreated, InvoicingConfig
from schemas.one_off import CreateInvoice, FinalizeInvoice
from storage.invoicing import Customer, Invoice, InvoicingRepository
from storage.invoicing.credits import CreditRepository
from storage.invoicing.one_off import OneOffRepository
from workers.invoicing import finalizing, service, taxes, taxing, views
from workers.invoicing import one_off_service as svc
from workers.invoicing.base import Handler, Result, emit
from workers.invoicing.errors import Conflict, NotFound, TaxRateNotInForce
from workers.invoicing.ledger import Wallet
from workers.invoicing.lines import line_values
from workers.runtime import Tx


def _result(row: dict[str, Any] | Invoice, *, replayed: bool = False) -> Result:
    values = row if isinstance(row, dict) else views.values(row)
    return {
        "invoice_id": values["id"],
        "status": values["status"],
        "number": values["number"],
        "total": values["total"],
        "amount_due": service.amount_due(values),
        "replayed": replayed,
    }


async def _finalize(
    tx: Tx,
    row: dict[str, Any],
    lines: list[service.Line],
    customer: Customer,
    config: InvoicingConfig,
    at: datetime,
    cause: CloudEvent,
) -> None:
    """Number the one-off draft of ``row`` (from the tenant's gapless sequence), let prepaid
    credits pay it and emit its events; writes its lines and columns."""
    repo = tx.repo(InvoicingRepository)
    tenant = row["tenant_id"]
    wallet = await Wallet.open(tx, {customer.id}, at)  # the customer locked, then the counter
    number = service.invoice_number(
        config.number_prefix, at.year, await repo.next_numbers(tenant, at.year, 1)
    )
    books = await taxing.books(tx, {tenant: config}, share=True)
    change, lines = finalizing.settle(
        tx, row, lines, customer, config, number, at, wallet, books[tenant], **cause.caused()
    )
    await repo.replace_lines([row["id"]], line_values(row["id"], tenant, lines))
    await repo.update_invoices([change])
    await wallet.write(tx, {customer.id: customer})
    await taxing.mark_used(tx, books, at)


def _resolve(book: taxes.Book, lines: list[service.Line], party: taxes.Party) -> list[service.Line]:
    """The rates of each line (one per line of the request): a rate unknown or not in force
    in the line's period fails the command, naming the line's rates (or the customer, whose
    rates or tenant's the line pays)."""
    out: list[service.Line] = []
    for i, ln in enumerate(lines):
        try:
            out += book.resolve([ln], party)
        except TaxRateNotInForce as e:
            field = f"lines[{i}].tax_rates" if ln.tax_names is not None else "customer"
            raise TaxRateNotInForce(e.message, field=field) from None
    return out


async def create_invoice(cmd: CreateInvoice, tx: Tx) -> Result:
    """A one-off draft with the given lines (emits invoice.created), finalized at once with
    ``finalize``. The same id or idempotency key again with the same content answers with
    that invoice and writes nothing; with other content it fails (conflict)."""
    spec, tenant = cmd.data, cmd.tenantid
    customer = await tx.repo(CreditRepository).find_customer(tenant, spec.customer)
    if customer is None:
        raise NotFound(f"no customer {spec.customer!r}", field="customer")
    currency = spec.currency or customer.currency
    if currency != customer.currency:
        raise Conflict(
            f"the customer pays in {customer.currency}, not {currency}", field="currency"
        )
    repo = tx.repo(InvoicingRepository)
    config = views.config_of(await repo.config(tenant))
    party = taxing.party(customer)
    book = (await taxing.books(tx, {tenant: config}))[tenant]
    lines = svc.lines(spec, currency, config.rounding, cmd.time, tax_exempt=customer.tax_exempt)
    lines = _resolve(book, lines, party)
    row = svc.draft_row(
        spec, tenant, customer.id, currency, party.tax_rate, book.taxation(party),
        config.rounding, lines, cmd.time,
    )  # fmt: skip
    lines = service.with_taxes(lines, row.pop("totals"))
    one_off = tx.repo(OneOffRepository)
    if not await one_off.insert(row, line_values(row["id"], tenant, lines)):
        existing = await one_off.existing(tenant, spec.invoice_id, spec.idempotency_key)
        if existing is None:
            raise Conflict(f"invoice id {spec.invoice_id!r} is taken", field="invoice_id")
        same_key = spec.idempotency_key is not None and (
            existing.idempotency_key == spec.idempotency_key
        )
        if (
            existing.kind != svc.ONE_OFF
            or existing.request_digest != row["request_digest"]
            or existing.idempotency_key != spec.idempotency_key
        ):
            what = "idempotency key" if same_key else "id"
            raise Conflict(
                f"an invoice with this {what} exists ({existing.id}) with other content; "
                "use a new key for a new invoice",
                field="idempotency_key" if same_key else "invoice_id",
            )
        return _result(existing, replayed=True)
    view = service.invoice_data(row, customer.external_id, [ln.model() for ln in lines])
    emit(tx, service.invoice_event(InvoiceCreated, view, **cmd.caused()), customer.external_id)
    if spec.finalize:
        await _finalize(tx, row, lines, customer, config, cmd.time, cmd)
    return _result(row)


async def finalize_invoice(cmd: FinalizeInvoice, tx: Tx) -> Result:
    """Finalizes a one-off draft; a finalized (or paid) one again is a no-op. A
    subscription's draft is refused: billing runs finalize it after its grace period."""
    tenant, invoice_id = cmd.tenantid, cmd.data.invoice_id
    repo = tx.repo(InvoicingRepository)
    invoice = await repo.invoice(tenant, invoice_id, lock=True)
    if invoice is None:
        raise NotFound(f"no invoice {invoice_id!r}", field="invoice_id")
    if invoice.kind != svc.ONE_OFF:
        raise Conflict(
            f"a {invoice.kind} invoice is finalized by billing runs, not by this command",
            field="invoice_id",
        )
    if invoice.status in service.ISSUED:
        return _result(invoice, replayed=True)
    service.check_transition(invoice.status, "finalized")  # a void draft stays void
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    config = views.config_of(await repo.config(tenant))
    stored = (await repo.lines([invoice.id]))[invoice.id]
    row = views.values(invoice)
    await _finalize(tx, row, [svc.stored_line(r) for r in stored], customer, config, cmd.time, cmd)
    return _result(row)


COMMANDS: dict[type[Any], Handler] = {
    CreateInvoice: create_invoice,
    FinalizeInvoice: finalize_invoice,
}
