"""Quarantine: the items a job step could not process (ADR 0044).

A job (a billing run, collection, an alert sweep, webhook dispatch or recording) that fails
permanently on one item — a subscription, an invoice, a billing run, a webhook message —
isolates that item here with its reason, and the rest of the work carries on. Claim queries
leave quarantined items out (``not_quarantined``) until an operator releases them
(``billstream quarantine release``), after the cause is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Index, String, Text, exists, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base


class QuarantineRow(Base):
    __tablename__ = "quarantine"
    __table_args__ = (
        Index(
            "uq_quarantine_active",
            "job",
            "kind",
            "tenant_id",
            "item_id",
            unique=True,
            postgresql_where=text("released_at IS NULL"),
        ),
        Index("ix_quarantine_tenant", "tenant_id", "quarantined_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    job: Mapped[str] = mapped_column(String(128), comment="e.g. invoicing.close_periods")
    kind: Mapped[str] = mapped_column(String(64), comment="subscription, invoice, billing_run…")
    item_id: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(String(128), comment="the exception's type")
    quarantined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    released_by: Mapped[str | None] = mapped_column(String(256))


@dataclass(frozen=True)
class Entry:
    id: str
    tenant_id: str
    job: str
    kind: str
    item_id: str
    reason: str
    error: str
    quarantined_at: datetime
    released_at: datetime | None = None
    released_by: str | None = None


def not_quarantined(job: str, kind: str, tenant_id: Any, item_id: Any) -> Any:
    """A WHERE clause for claim queries: the item of ``tenant_id`` and ``item_id`` (columns)
    is not quarantined by ``job``."""
    q = QuarantineRow
    return ~exists().where(
        q.job == job,
        q.kind == kind,
        q.tenant_id == tenant_id,
        q.item_id == item_id,
        q.released_at.is_(None),
    )


def _entry(row: QuarantineRow) -> Entry:
    return Entry(
        row.id,
        row.tenant_id,
        row.job,
        row.kind,
        row.item_id,
        row.reason,
        row.error,
        row.quarantined_at,
        row.released_at,
        row.released_by,
    )


class QuarantineRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, entry: Entry) -> bool:
        """Quarantine an item; False if it already is (by this job)."""
        values = {k: v for k, v in vars(entry).items() if k not in ("released_at", "released_by")}
        result = await self.session.execute(
            insert(QuarantineRow)
            .values(**values)
            .on_conflict_do_nothing(
                index_elements=["job", "kind", "tenant_id", "item_id"],
                index_where=text("released_at IS NULL"),
            )
            .returning(QuarantineRow.id)
        )
        return result.scalar() is not None

    async def list(
        self, tenant_id: str | None = None, *, released: bool = False, limit: int = 100
    ) -> list[Entry]:
        q = select(QuarantineRow)
        if tenant_id is not None:
            q = q.where(QuarantineRow.tenant_id == tenant_id)
        if not released:
            q = q.where(QuarantineRow.released_at.is_(None))
        q = q.order_by(QuarantineRow.quarantined_at.desc(), QuarantineRow.id).limit(limit)
        return [_entry(r) for r in await self.session.scalars(q)]

    async def get(self, id: str) -> Entry | None:
        row = await self.session.get(QuarantineRow, id)
        return _entry(row) if row is not None else None

    async def release(self, id: str, actor: str) -> Entry | None:
        """Release one active entry (its item is claimed again); None if none is active."""
        row = await self.session.scalar(
            update(QuarantineRow)
            .where(QuarantineRow.id == id, QuarantineRow.released_at.is_(None))
            .values(released_at=datetime.now(UTC), released_by=actor)
            .returning(QuarantineRow)
        )
        return _entry(row) if row is not None else None
