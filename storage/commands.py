"""Command outcomes (``GET /v1/commands/{id}``) and HTTP idempotency keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import DateTime, ForeignKey, Integer, LargeBinary, String, delete, func
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base

CommandStatus = Literal["pending", "succeeded", "failed"]


class CommandRecord(Base):
    __tablename__ = "commands"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    type: Mapped[str] = mapped_column(String(256))
    # the envelope's subject, recorded by the ingress (NULL: a worker recorded the outcome
    # first and the ingress has not recorded it yet, or a command from before 0033)
    subject: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    request_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )


@dataclass(frozen=True)
class CommandOutcome:
    tenant_id: str
    id: str
    status: CommandStatus
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None


class CommandRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def accept(
        self, tenant_id: str, command_id: str, command_type: str, subject: str | None = None
    ) -> None:
        """Record a command as pending, sent for ``subject`` (only the subject when a worker
        has already recorded its outcome)."""
        stmt = insert(CommandRecord).values(
            tenant_id=tenant_id, id=command_id, type=command_type, subject=subject,
            status="pending",
        )  # fmt: skip
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[CommandRecord.tenant_id, CommandRecord.id],
                set_={"subject": stmt.excluded.subject},
            )
        )

    async def complete(self, outcomes: list[tuple[str, CommandOutcome]]) -> None:
        """Record final outcomes, ``(command_type, outcome)`` pairs, in one statement."""
        if not outcomes:
            return
        stmt = insert(CommandRecord).values(
            [
                {
                    "tenant_id": o.tenant_id,
                    "id": o.id,
                    "type": t,
                    "status": o.status,
                    "error": o.error,
                    "result": o.result,
                    "completed_at": func.now(),
                }
                for t, o in outcomes
            ]
        )
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[CommandRecord.tenant_id, CommandRecord.id],
                set_={
                    "status": stmt.excluded.status,
                    "error": stmt.excluded.error,
                    "result": stmt.excluded.result,
                    "completed_at": stmt.excluded.completed_at,
                },
            )
        )

    async def get(self, tenant_id: str, command_id: str) -> CommandRecord | None:
        return await self.session.get(CommandRecord, (tenant_id, command_id))


IdempotencyState = Literal["new", "in_progress", "mismatch", "done"]


class IdempotencyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def begin(
        self, tenant_id: str, key: str, digest: bytes
    ) -> tuple[IdempotencyState, IdempotencyRecord | None]:
        inserted = await self.session.execute(
            insert(IdempotencyRecord)
            .values(tenant_id=tenant_id, key=key, request_digest=digest)
            .on_conflict_do_nothing()
            .returning(IdempotencyRecord.key)
        )
        if inserted.scalar_one_or_none() is not None:
            return "new", None
        row = await self.session.get(IdempotencyRecord, (tenant_id, key))
        assert row is not None
        if row.request_digest != digest:
            return "mismatch", row
        if row.status_code is None:
            return "in_progress", row
        return "done", row

    async def finish(
        self, tenant_id: str, key: str, status_code: int, response: dict[str, Any]
    ) -> None:
        row = await self.session.get(IdempotencyRecord, (tenant_id, key))
        if row is not None:
            row.status_code = status_code
            row.response = response

    async def abandon(self, tenant_id: str, key: str) -> None:
        await self.session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.tenant_id == tenant_id,
                IdempotencyRecord.key == key,
                IdempotencyRecord.status_code.is_(None),
            )
        )

    async def purge(self, older_than: timedelta) -> int:
        result = await self.session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.created_at < func.now() - older_than)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


__all__ = ["CommandOutcome", "CommandRecord", "CommandRepository", "IdempotencyRepository"]
