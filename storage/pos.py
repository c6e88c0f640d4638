"""POS mappings: per tenant and POS source, how receipts become usage events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, String, func, tuple_
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base


class PosMappingRow(Base):
    __tablename__ = "pos_mappings"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    command_id: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class PosMappingRepository:
    """Mappings as JSON objects (the service validates them into ``PosMappingSpec``)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def put(self, tenant_id: str, source: str, spec: dict[str, Any], command_id: str) -> None:
        stmt = insert(PosMappingRow).values(
            tenant_id=tenant_id, source=source, spec=spec, command_id=command_id
        )
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[PosMappingRow.tenant_id, PosMappingRow.source],
                set_={
                    "spec": stmt.excluded.spec,
                    "command_id": stmt.excluded.command_id,
                    "updated_at": func.now(),
                },
            )
        )

    async def get(self, tenant_id: str, source: str) -> dict[str, Any] | None:
        row = await self.session.get(PosMappingRow, (tenant_id, source))
        return dict(row.spec) if row is not None else None

    async def for_sources(
        self, keys: set[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """The mappings of these ``(tenant_id, source)`` pairs (one query)."""
        if not keys:
            return {}
        rows = await self.session.execute(
            PosMappingRow.__table__.select().where(
                tuple_(PosMappingRow.tenant_id, PosMappingRow.source).in_(sorted(keys))
            )
        )
        return {(r.tenant_id, r.source): dict(r.spec) for r in rows}
