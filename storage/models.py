"""Imports every ORM module so ``Base.metadata`` knows every table (Alembic, tests)."""

from storage import commands, inbox, invoicing, metering, outbox, tenants  # noqa: F401
from storage.db import Base

__all__ = ["Base"]
