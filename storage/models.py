"""Imports every ORM module so ``Base.metadata`` knows every table (Alembic, tests)."""

from storage import (  # noqa: F401
    alert_credits,
    alerts,
    commands,
    documents,
    entitlements,
    inbox,
    invoicing,
    metering,
    ops,
    outbox,
    partners,
    payments,
    pos,
    quarantine,
    receipts,
    tenants,
    webhooks,
)
from storage.db import Base
from storage.invoicing import (
    credit_models,  # noqa: F401
    credit_note_models,  # noqa: F401
    discount_models,  # noqa: F401
    tax_models,  # noqa: F401
)

__all__ = ["Base"]
