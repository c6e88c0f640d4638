"""Finalizing one invoice, the part every finalization shares (a billing run's drafts, a
one-off draft): prepaid credits pay what they may, the totals (tax once per rate), the
commitments the spend draws down, the number and due date, and ``invoice.finalized`` (with
``invoice.paid`` when nothing is left to pay). The caller reserves the numbers, opens the
wallet (locking the customers) and writes the lines, the changes and the wallet after."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from schemas.invoicing import InvoiceFinalized, InvoicePaid, InvoicingConfig
from storage.invoicing import Customer
from workers.invoicing import service
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
    **envelope: Any,
) -> tuple[dict[str, Any], list[service.Line]]:
    """Finalize the invoice of ``row`` (its values, updated in place) with its charge and
    discount ``lines``: returns the columns it changes and all its lines (credit lines
    added); emits its events (``envelope``: the tenant, or what caused it)."""
    tax_rate = None if customer.tax_exempt else customer.tax_rate
    mode = config.credits_apply
    out = [*lines, *wallet.pay(row, lines, tax_rate, mode)]
    t = service.totals(out, tax_rate, row["currency"], row["rounding"], mode)
    wallet.draw(row, t.subtotal - t.discount)  # what was charged, before prepaid credits
    change = service.finalized(row, t, tax_rate, number, as_of, customer.net_terms_days)
    row.update(change)
    view = service.invoice_data(
        row, customer.external_id, [ln.model() for ln in out], status="finalized"
    )
    emit(tx, service.invoice_event(InvoiceFinalized, view, **envelope), customer.external_id)
    if change["status"] == "paid":
        paid = view.model_copy(update={"status": "paid"})
        emit(tx, service.invoice_event(InvoicePaid, paid, **envelope), customer.external_id)
    return change, out
