"""The inbox: which messages each consumer has already applied.

Key: ``(consumer, message_key)`` where ``message_key`` is a 16-byte BLAKE2b digest of
``tenantid / source / id`` (the CloudEvents identity). Rows are kept for the dedupe
window (``inbox_retention_days``, at least 32 days), then purged.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import DateTime, LargeBinary, String, delete, func, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base


class InboxEntry(Base):
    __tablename__ = "inbox"

    consumer: Mapped[str] = mapped_column(String(128), primary_key=True)
    message_key: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )


def message_key(tenant_id: str, source: str, message_id: str) -> bytes:
    return hashlib.blake2b(
        f"{tenant_id}\x1f{source}\x1f{message_id}".encode(), digest_size=16
    ).digest()


_CLAIM = text(
    """
    INSERT INTO inbox (consumer, message_key)
    SELECT :consumer, k FROM unnest(CAST(:keys AS bytea[])) AS k
    ON CONFLICT DO NOTHING
    RETURNING message_key
    """
)


async def claim(session: AsyncSession, consumer: str, keys: list[bytes]) -> set[bytes]:
    """Record ``keys`` as processed by ``consumer``; return those not seen before.

    One statement for the whole batch."""
    if not keys:
        return set()
    result = await session.execute(_CLAIM, {"consumer": consumer, "keys": keys})
    return {row[0] for row in result}


async def purge(session: AsyncSession, older_than: timedelta) -> int:
    result = await session.execute(
        delete(InboxEntry).where(InboxEntry.processed_at < func.now() - older_than)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def release(session: AsyncSession, consumer: str, keys: list[bytes]) -> None:
    """Forget ``keys`` (a message that was dead-lettered may be applied after a redrive)."""
    await session.execute(
        delete(InboxEntry).where(InboxEntry.consumer == consumer, InboxEntry.message_key.in_(keys))
    )
