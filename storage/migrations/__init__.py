"""The database's schema history (Alembic: ``env.py``, ``versions/``); ``upgrade`` applies it
(``billstream migrate``), so code outside storage/ never touches the engine to migrate."""

from __future__ import annotations

from storage.db import migrate_sync


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (idempotent)."""
    migrate_sync(database_url, revision)
