"""The transactional outbox: events are written in the same transaction as their cause,
and the relay publishes them afterwards (at least once, in order per database)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, DateTime, Index, LargeBinary, String, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base

# Each worker (metering, alerts, …) publishes the rows its processes wrote: one relay per
# worker name at a time (keeps per-key order: a topic's keys are written by one worker);
# its other replicas wait as standbys, and other workers' relays publish in parallel.
# Rows of no worker (relay '': the CLI's audit events) go to whichever relay sees them
# first, row-locked so never twice.


class OutboxRow(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_relay", "relay", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(249))
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    relay: Mapped[str] = mapped_column(
        String(64), server_default="", comment="the worker whose relay publishes it"
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, str]


_INSERT = text(
    """
    INSERT INTO outbox (topic, key, value, headers, relay)
    SELECT t, k, v, CAST(h AS jsonb), :relay
    FROM unnest(CAST(:topic AS text[]), CAST(:key AS bytea[]), CAST(:value AS bytea[]),
                CAST(:headers AS text[])) WITH ORDINALITY AS m(t, k, v, h, n)
    ORDER BY n
    """
)


async def add(session: AsyncSession, messages: list[OutgoingMessage]) -> None:
    """Write ``messages`` now, in order, with one set-based statement (no ORM objects: a
    few µs a row where ORM inserts cost tens). Inside a savepoint that rolls back, the rows
    roll back with it."""
    if not messages:
        return
    await session.execute(
        _INSERT,
        {
            "topic": [m.topic for m in messages],
            "key": [m.key for m in messages],
            "value": [m.value for m in messages],
            "headers": [json.dumps(m.headers, separators=(",", ":")) for m in messages],
            "relay": relay_of(session),
        },
    )


def relay_of(session: AsyncSession) -> str:
    """The worker whose relay publishes what ``session`` writes to the outbox (set by the
    worker's session factory; '' outside workers)."""
    return str(session.info.get("relay", ""))


async def try_lock_relay(session: AsyncSession, relay: str | None = None) -> bool:
    """Transaction-scoped: True when this transaction is the active relay of ``relay``
    (default: the session's worker)."""
    result = await session.execute(
        text("SELECT pg_try_advisory_xact_lock(hashtextextended('billstream-relay:' || :r, 0))"),
        {"r": relay_of(session) if relay is None else relay},
    )
    return bool(result.scalar_one())


@dataclass(frozen=True)
class PendingMessage:
    """An outbox row waiting to be published (plain data: no ORM identity to track)."""

    id: int
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, str]


# Each of the two kinds of rows read off ix_outbox_relay in id order, at most ``limit`` of
# each, then merged: ``relay = :relay OR relay = ''`` was planned as a bitmap of every
# waiting row, sorted on each call — when a large billing run put the relay behind, every
# poll read and sorted its whole backlog (6,000 blocks a call at 100,000 subscriptions,
# issue 22), which put it further behind.
_PENDING = text(
    """
    SELECT id, topic, key, value, headers FROM outbox
    WHERE id = ANY(ARRAY(
        (SELECT id FROM outbox WHERE relay = :relay ORDER BY id LIMIT :limit)
        UNION ALL
        (SELECT id FROM outbox WHERE relay = '' ORDER BY id LIMIT :limit)
    ))
    ORDER BY id LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)
_REMOVE = text("DELETE FROM outbox WHERE id = ANY(CAST(:ids AS bigint[]))")


async def pending(
    session: AsyncSession, limit: int, relay: str | None = None
) -> list[PendingMessage]:
    """The oldest ``limit`` rows of ``relay`` (default: the session's worker) and of no
    worker, in commit order."""
    result = await session.execute(
        _PENDING, {"limit": limit, "relay": relay_of(session) if relay is None else relay}
    )
    return [PendingMessage(*r) for r in result]


_STALE = text(
    """
    SELECT relay FROM outbox
    WHERE relay <> '' AND relay <> :relay
    GROUP BY relay
    HAVING min(created_at) < now() - CAST(:age AS interval)
    ORDER BY relay
    """
)


async def stale_relays(session: AsyncSession, older_than: timedelta) -> list[str]:
    """Other workers whose oldest row waits longer than ``older_than``: a worker that stopped
    (or one far behind), whose rows would otherwise wait for it to run again."""
    result = await session.execute(_STALE, {"relay": relay_of(session), "age": older_than})
    return [r[0] for r in result]


async def remove(session: AsyncSession, ids: list[int]) -> None:
    """Delete published rows (one statement, one array parameter, whatever their number)."""
    await session.execute(_REMOVE, {"ids": ids})


async def backlog(session: AsyncSession) -> tuple[int, datetime | None]:
    """How many rows wait, and when the oldest was written."""
    row = (await session.execute(select(func.count(), func.min(OutboxRow.created_at)))).one()
    return int(row[0]), row[1]
