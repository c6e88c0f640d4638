"""Invoicing: customers, plans, subscriptions, billing runs, invoices.

Its face: what other packages may import (an import-linter contract enforces it) — the views
of its rows the ingress answers with, and the spend of current periods alerts reads."""

from workers.invoicing.credit_note_views import find_credit_notes
from workers.invoicing.credit_views import CreditBalance, credit_balances
from workers.invoicing.discounts import coupon_data, discount_data
from workers.invoicing.hierarchy import MAX_DEPTH
from workers.invoicing.lines import payers
from workers.invoicing.receipt_views import (
    attested_credit_notes,
    attested_invoices,
    finalized_documents,
)
from workers.invoicing.service import add_interval
from workers.invoicing.tax_report import Encoder as TaxReportEncoder
from workers.invoicing.tax_report_views import tax_report_page
from workers.invoicing.views import (
    DraftPeriod,
    config_of,
    draft_totals,
    invoice_data,
    subscription_data,
    usage_window,
)

__all__ = [
    "MAX_DEPTH",
    "CreditBalance",
    "DraftPeriod",
    "TaxReportEncoder",
    "add_interval",
    "attested_credit_notes",
    "attested_invoices",
    "config_of",
    "coupon_data",
    "credit_balances",
    "discount_data",
    "draft_totals",
    "finalized_documents",
    "find_credit_notes",
    "invoice_data",
    "payers",
    "subscription_data",
    "tax_report_page",
    "usage_window",
]
