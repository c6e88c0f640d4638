"""Operations records: the audit trail of replays and redrives, and which dead-lettered
records were redriven (so one is not redriven twice by accident)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, func, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base


class OpsAuditRow(Base):
    """Every ops event (``ops.replayed``, ``ops.redriven``), kept beyond Kafka's retention."""

    __tablename__ = "ops_audit"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    event: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )


class DlqRedriveRow(Base):
    __tablename__ = "dlq_redrives"

    dlq_topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    dlq_partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    dlq_offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    target_topic: Mapped[str] = mapped_column(String(249))
    audit_id: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(256))
    redriven_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


@dataclass(frozen=True)
class Redrive:
    dlq_partition: int
    dlq_offset: int
    target_topic: str
    actor: str
    redriven_at: datetime


class OpsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def audit(self, event_id: str, type: str, actor: str, reason: str, event: Any) -> None:
        await self.session.execute(
            insert(OpsAuditRow)
            .values(id=event_id, type=type, actor=actor, reason=reason, event=event)
            .on_conflict_do_nothing()
        )

    async def redrives(self, dlq_topic: str) -> dict[tuple[int, int], Redrive]:
        """Every record of ``dlq_topic`` redriven so far, by (partition, offset)."""
        rows = await self.session.scalars(
            select(DlqRedriveRow).where(DlqRedriveRow.dlq_topic == dlq_topic)
        )
        return {
            (r.dlq_partition, r.dlq_offset): Redrive(
                r.dlq_partition, r.dlq_offset, r.target_topic, r.actor, r.redriven_at
            )
            for r in rows
        }

    async def claim_redrives(
        self,
        dlq_topic: str,
        records: list[tuple[int, int, str]],
        *,
        audit_id: str,
        actor: str,
        again: bool = False,
    ) -> set[tuple[int, int]]:
        """Record ``(partition, offset, target topic)`` as redriven; return those claimed now.

        Without ``again``, records redriven before are not claimed (a second concurrent
        redrive of the same records claims nothing). Call it in the transaction that commits
        only once the records are published."""
        if not records:
            return set()
        stmt = insert(DlqRedriveRow).values(
            [
                {
                    "dlq_topic": dlq_topic,
                    "dlq_partition": p,
                    "dlq_offset": o,
                    "target_topic": t,
                    "audit_id": audit_id,
                    "actor": actor,
                }
                for p, o, t in records
            ]
        )
        if again:
            stmt = stmt.on_conflict_do_update(
                index_elements=[
                    DlqRedriveRow.dlq_topic,
                    DlqRedriveRow.dlq_partition,
                    DlqRedriveRow.dlq_offset,
                ],
                set_={
                    "audit_id": stmt.excluded.audit_id,
                    "actor": stmt.excluded.actor,
                    "redriven_at": func.now(),
                },
            )
        else:
            stmt = stmt.on_conflict_do_nothing()
        result = await self.session.execute(
            stmt.returning(DlqRedriveRow.dlq_partition, DlqRedriveRow.dlq_offset)
        )
        return {(int(p), int(o)) for p, o in result}
