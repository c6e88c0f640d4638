"""Invoicing: customers, plans, subscriptions, billing runs, invoices.

Its face: what other packages may import (an import-linter contract enforces it) — the views
of its rows the ingress answers with, and the spend of current periods alerts reads."""

from workers.invoicing.credit_views import CreditBalance, credit_balances
from workers.invoicing.views import (
    DraftPeriod,
    config_of,
    draft_totals,
    invoice_data,
    subscription_data,
    usage_window,
)

__all__ = [
    "CreditBalance",
    "DraftPeriod",
    "config_of",
    "credit_balances",
    "draft_totals",
    "invoice_data",
    "subscription_data",
    "usage_window",
]
