"""Finalizing one invoice, the part every finalization shares (a billing run's drafts, a
one-off draft): prepaid credits pay what they may, the totals (tax once per rate), the
commitments the spend draws down, the number and due date, and ``invoice.finalized`` (with
``invoice.paid`` when nothing is left to pay). The caller reserves the numbers, opens the
wallet (locking the customers) and writes the lines, the changes and the wallet after."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.invoicing import InvoiceFinalized, InvoiceLine, InvoicePaid, InvoicingConfig
from schemas.taxes import Buyer, TaxAmount
from storage.invoicing import Customer
from workers.invoicing import service, taxes, taxing
from workers.invoicing.base import emit
from workers.invoicing.ledger import Wallet
from workers.runtime import Tx


def settle(
    tx: Tx,
    row: dict[str, Any],
    lines: Sequence[service.Line],
    customer: Customer,
    config: InvoicingConfig,
    number: str,
    as_of: datetime,
    wallet: Wallet,
    book: taxes.Book,
    **envelope: Any,
) -> tuple[dict[str, Any], list[service.Line]]:
    """Finalize the invoice of ``row`` (its values, updated in place) with its charge and
    discount ``lines``: returns the columns it changes and all its lines (credit lines
    added, every line with its taxes); emits its events (``envelope``: the tenant, or what
    caused it). The rate versions it used become immutable."""
    settled = prepare(row, lines, customer, config, as_of, wallet, book)
    return settled.numbered(tx, number, **envelope), settled.lines


@dataclass
class Settled:
    """An invoice settled but not numbered yet (``prepare``): its columns but the number, all
    its lines, and what its events are made of."""

    row: dict[str, Any]
    change: dict[str, Any]
    lines: list[service.Line]
    customer: str  # external id
    models: list[InvoiceLine]
    breakdown: list[TaxAmount]
    buyer: Buyer

    def numbered(self, tx: Tx, number: str, **envelope: Any) -> dict[str, Any]:
        """Give it its ``number`` and emit its events; returns the columns it changes."""
        self.change["number"] = number
        self.row.update(self.change)
        view = service.invoice_data(
            self.row,
            self.customer,
            self.models,
            status="finalized",
            breakdown=self.breakdown,
            buyer=self.buyer,
        )
        emit(tx, service.invoice_event(InvoiceFinalized, view, **envelope), self.customer)
        if self.change["status"] == "paid":
            paid = view.model_copy(update={"status": "paid"})
            emit(tx, service.invoice_event(InvoicePaid, paid, **envelope), self.customer)
        return self.change


def prepare(
    row: dict[str, Any],
    lines: Sequence[service.Line],
    customer: Customer,
    config: InvoicingConfig,
    as_of: datetime,
    wallet: Wallet,
    book: taxes.Book,
) -> Settled:
    """All of ``settle`` but the number and the events (``Settled.numbered``): a billing run
    settles a chunk's invoices first and reserves their numbers last, so the tenant's
    counter row (locked until the transaction commits) is held as briefly as possible
    while replicas finalize chunks at once."""
    party = taxing.party(customer)
    taxation = book.taxation(party)
    lines = book.resolve(lines, party)
    mode = config.credits_apply
    out = [*lines, *wallet.pay(row, lines, taxation, mode)]
    t = service.totals(out, taxation, row["currency"], row["rounding"], mode)
    out = service.with_taxes(out, t)
    wallet.draw(row, t.subtotal - t.discount)  # what was charged, before prepaid credits
    change = service.finalized(row, t, party.tax_rate, "", as_of, customer.net_terms_days)
    change["tax_note"] = book.note(party)
    buyer = taxing.buyer(customer)
    change["buyer"] = buyer.model_dump(mode="json")
    book.used.update(taxes.used(t.computed))
    return Settled(
        row,
        change,
        out,
        customer.external_id,
        [ln.model() for ln in out],
        [a.model() for a in t.computed.breakdown],
        buyer,
    )
