"""Invoicing's storage: customers, plans, subscriptions, billing runs, invoices and their
lines (``models.py``), and the repository that holds all of its SQL (``repository.py``);
prepaid credits and commitments (``credit_models.py``, ``credits.py``)."""

from storage.invoicing.models import (
    BillingRun,
    Customer,
    Invoice,
    InvoiceLineRow,
    InvoicePayment,
    InvoiceSequence,
    InvoicingConfigRow,
    Plan,
    Subscription,
)
from storage.invoicing.repository import INVOICE_COLUMNS, LINE_COLUMNS, InvoicingRepository

__all__ = [
    "INVOICE_COLUMNS",
    "LINE_COLUMNS",
    "BillingRun",
    "Customer",
    "Invoice",
    "InvoiceLineRow",
    "InvoicePayment",
    "InvoiceSequence",
    "InvoicingConfigRow",
    "InvoicingRepository",
    "Plan",
    "Subscription",
]
