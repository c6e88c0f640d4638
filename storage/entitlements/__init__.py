"""Entitlements: features, what plans, overrides and grants give of them, and the read model
a check is answered from (docs/entitlements.md).

The read model is kept current by the entitlements worker from events: the customers'
subscriptions (``subscription.*``), their unpaid invoices (``payment.failed``,
``payment.dunning_exhausted``, ``invoice.paid``/``voided``), and their usage in the current
period of every meter a feature counts (``usage.totals_changed``). A check reads it in one
statement (``snapshot.py``) and never aggregates usage. The tables are in ``models.py``,
every other read and write in ``repository.py``.

The token signing keys (``entitlement_keys``) belong to the deployment, not to a tenant:
one JWKS at ``/.well-known/jwks.json`` serves every gateway.
"""

from storage.entitlements.models import (
    ConfigRow,
    FeatureRow,
    GrantRow,
    LimitHitRow,
    OverrideRow,
    PlanGrantRow,
    SigningKeyRow,
    StaleRow,
    StandingRow,
    SubscriptionRow,
    UnpaidRow,
    UsageRow,
)
from storage.entitlements.repository import EntitlementRepository
from storage.entitlements.sets import Hit, UsageTotal
from storage.entitlements.snapshot import Snapshot, read_snapshot

__all__ = [
    "ConfigRow",
    "EntitlementRepository",
    "FeatureRow",
    "GrantRow",
    "Hit",
    "LimitHitRow",
    "OverrideRow",
    "PlanGrantRow",
    "SigningKeyRow",
    "Snapshot",
    "StaleRow",
    "StandingRow",
    "SubscriptionRow",
    "UnpaidRow",
    "UsageRow",
    "UsageTotal",
    "read_snapshot",
]
