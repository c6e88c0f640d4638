"""The transactional outbox: events are written in the same transaction as their cause,
and the relay publishes them afterwards (at least once, in order per database)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, LargeBinary, String, delete, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base

# one relay at a time publishes (keeps per-key order); the others wait as standbys
RELAY_LOCK_ID = 0x6269_6C6C_0001


class OutboxRow(Base):
    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(249))
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, str]


def add(session: AsyncSession, messages: list[OutgoingMessage]) -> None:
    session.add_all(
        OutboxRow(topic=m.topic, key=m.key, value=m.value, headers=m.headers) for m in messages
    )


async def try_lock_relay(session: AsyncSession) -> bool:
    """Transaction-scoped: True when this transaction is the active relay."""
    result = await session.execute(
        text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": RELAY_LOCK_ID}
    )
    return bool(result.scalar_one())


async def pending(session: AsyncSession, limit: int) -> list[OutboxRow]:
    rows = await session.scalars(select(OutboxRow).order_by(OutboxRow.id).limit(limit))
    return list(rows)


async def remove(session: AsyncSession, ids: list[int]) -> None:
    await session.execute(delete(OutboxRow).where(OutboxRow.id.in_(ids)))


async def backlog(session: AsyncSession) -> tuple[int, datetime | None]:
    """How many rows wait, and when the oldest was written."""
    row = (await session.execute(select(func.count(), func.min(OutboxRow.created_at)))).one()
    return int(row[0]), row[1]
