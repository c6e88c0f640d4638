"""Partners: partners and their tiers, commission rules, the attribution of customers to
partners, the commission ledger and the state it is derived from, commission statements and
payouts (docs/partners.md). The tables are in ``models.py``, every read and write in
``repository.py``."""

from storage.partners.models import (
    AttributionRow,
    CommissionAccrualRow,
    CommissionCauseRow,
    CommissionEntryRow,
    CommissionInvoiceRow,
    CommissionPeriodRow,
    CommissionRuleRow,
    PartnerRow,
    PartnerSubscriptionRow,
    PayoutRow,
    StatementNumberRow,
    StatementRow,
)
from storage.partners.repository import PartnerRepository

__all__ = [
    "AttributionRow",
    "CommissionAccrualRow",
    "CommissionCauseRow",
    "CommissionEntryRow",
    "CommissionInvoiceRow",
    "CommissionPeriodRow",
    "CommissionRuleRow",
    "PartnerRepository",
    "PartnerRow",
    "PartnerSubscriptionRow",
    "PayoutRow",
    "StatementNumberRow",
    "StatementRow",
]
