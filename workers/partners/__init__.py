"""Partners: partners and their tiers, commission rules, the attribution of customers to
partners, commissions accrued on paid invoices and reversed by refunds and credit notes,
commission statements and payouts (docs/partners.md).

Its face: what other packages may import (an import-linter contract enforces it) — the
views the ingress answers with."""

from workers.partners.views import (
    attribution_data,
    commission_data,
    partner_data,
    rule_data,
    statement_data,
)

__all__ = [
    "attribution_data",
    "commission_data",
    "partner_data",
    "rule_data",
    "statement_data",
]
