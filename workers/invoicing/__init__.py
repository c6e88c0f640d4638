"""Invoicing: plans, subscriptions, billing runs, invoices.

Its face: what other packages may import (an import-linter contract enforces it)."""

from workers.invoicing.views import DraftPeriod, draft_totals, usage_window

__all__ = ["DraftPeriod", "draft_totals", "usage_window"]
