"""Webhook endpoints, messages (one per event and endpoint) and delivery attempts.

A message is pending until it succeeds or its retry schedule is exhausted. The dispatcher
claims due messages with ``FOR UPDATE SKIP LOCKED`` and leases them (``leased_until`` and a
``lease_token``) for the time a delivery can take; outcomes are recorded only under the
lease that sent them, and an expired lease (a crashed process) makes the message due again.
Every statement on the hot path is set-based: one insert per fan-out batch, one claim, and
one update + one insert per batch of outcomes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    delete,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base
from storage.quarantine import not_quarantined

# the webhooks jobs (``workers.runtime.jobs``) whose quarantined messages are not claimed
DELIVER_JOB = "webhooks.deliver"  # claiming and sending
RECORD_JOB = "webhooks.record"  # recording outcomes


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text))
    rate_limit_per_s: Mapped[int | None] = mapped_column(Integer)
    ordered: Mapped[bool] = mapped_column(Boolean, default=False)
    # the body sent: "standard" (the CloudEvent) | "slack" (a rendered Slack message)
    format: Mapped[str] = mapped_column(String(16), default="standard", server_default="standard")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(16))
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    def __repr__(self) -> str:  # never the secrets
        return f"WebhookEndpoint(tenant_id={self.tenant_id!r}, id={self.id!r})"


class WebhookMessage(Base):
    __tablename__ = "webhook_messages"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "endpoint_id"],
            ["webhook_endpoints.tenant_id", "webhook_endpoints.id"],
            ondelete="CASCADE",
        ),
        Index(
            "ix_webhook_messages_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "ix_webhook_messages_pending_order",
            "tenant_id",
            "endpoint_id",
            "seq",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_messages_endpoint", "tenant_id", "endpoint_id", "seq"),
    )

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(String(40))
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    event_id: Mapped[str] = mapped_column(String(256))
    event_type: Mapped[str] = mapped_column(String(256))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cycle_attempts: Mapped[int] = mapped_column(Integer, default=0)  # since (re)scheduling
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_token: Mapped[str | None] = mapped_column(String(36))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_response_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "message_id"],
            ["webhook_messages.tenant_id", "webhook_messages.id"],
            ondelete="CASCADE",
        ),
        Index("ix_webhook_attempts_message", "tenant_id", "message_id", "id"),
        Index("ix_webhook_attempts_endpoint", "tenant_id", "endpoint_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(63))
    endpoint_id: Mapped[str] = mapped_column(String(40))
    message_id: Mapped[str] = mapped_column(String(40))
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))  # succeeded | failed
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


# --- the shapes the webhooks service hands over ---------------------------------------


@dataclass(frozen=True)
class EndpointDef:
    tenant_id: str
    id: str
    url: str
    description: str
    event_types: list[str]
    rate_limit_per_s: int | None
    ordered: bool
    format: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def of(cls, row: WebhookEndpoint) -> EndpointDef:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class EndpointSecrets:
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None

    def __repr__(self) -> str:
        return "EndpointSecrets(<redacted>)"


@dataclass(frozen=True)
class EndpointFilter:
    tenant_id: str
    id: str
    event_types: list[str]
    format: str = "standard"  # which body its messages carry


@dataclass(frozen=True)
class NewMessage:
    tenant_id: str
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    payload: bytes
    next_attempt_at: datetime


@dataclass(frozen=True)
class Claimed:
    """A leased message with what delivering it needs."""

    tenant_id: str
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    payload: bytes
    attempts: int
    cycle_attempts: int
    lease_token: str
    url: str
    secrets: EndpointSecrets
    rate_limit_per_s: int | None
    failing_since: datetime | None


@dataclass(frozen=True)
class MessageUpdate:
    """The state a message moves to after an attempt (or a rate-limit deferral)."""

    tenant_id: str
    id: str
    lease_token: str
    status: str
    counted: bool  # an attempt was made (False: deferred by the rate limit)
    cycle_attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_response_status: int | None
    finished_at: datetime | None


@dataclass(frozen=True)
class AttemptRow:
    tenant_id: str
    endpoint_id: str
    message_id: str
    attempted_at: datetime
    status: str
    response_status: int | None
    response_body: str | None
    latency_ms: int
    error: str | None


@dataclass(frozen=True)
class MessageView:
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_response_status: int | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class AttemptView:
    id: int
    message_id: str
    endpoint_id: str
    attempted_at: datetime
    status: str
    response_status: int | None
    response_body: str | None
    latency_ms: int
    error: str | None


@contextlib.contextmanager
def _secret_parameters() -> Iterator[None]:
    """A failing statement that carries a secret must not show it: SQLAlchemy errors print
    their parameters (and tracebacks get logged)."""
    try:
        yield
    except sa_exc.StatementError as e:
        e.hide_parameters = True
        raise


def _columns(rows: list[Any], names: list[str] | None = None) -> dict[str, list[Any]]:
    """Rows as one array per field: the parameters of an ``unnest`` statement."""
    names = names or [f.name for f in fields(rows[0])]
    return {name: [getattr(r, name) for r in rows] for name in names}


# Deleting an endpoint may happen at any moment, between the fan-out reading the endpoints
# and inserting their messages, or while a message is being delivered: every statement
# that writes a row referring to an endpoint or a message writes it only while that row
# still exists, under a ``FOR KEY SHARE`` lock (a concurrent delete waits for this
# transaction; one that committed first makes the row disappear from the join). An insert
# that trusts a snapshot would violate the foreign key and fail its whole batch: the event
# would be dead-lettered, the outcomes of every tenant never recorded (decision: 0013).
_INSERT_MESSAGES = text(
    """
    WITH d AS (
        SELECT * FROM unnest(
            CAST(:tenant_id AS text[]), CAST(:id AS text[]), CAST(:endpoint_id AS text[]),
            CAST(:event_id AS text[]), CAST(:event_type AS text[]),
            CAST(:payload AS bytea[]), CAST(:next_attempt_at AS timestamptz[]))
          WITH ORDINALITY AS d(t, i, e, ev, ty, p, n, o)
    ), live AS MATERIALIZED (  -- in key order, the lock order of every writer
        SELECT ep.tenant_id, ep.id FROM webhook_endpoints ep
        WHERE (ep.tenant_id, ep.id) IN (SELECT t, e FROM d)
        ORDER BY ep.tenant_id, ep.id
        FOR KEY SHARE
    )
    INSERT INTO webhook_messages
        (tenant_id, id, endpoint_id, event_id, event_type, payload, status, attempts,
         cycle_attempts, next_attempt_at, created_at)
    SELECT d.t, d.i, d.e, d.ev, d.ty, d.p, 'pending', 0, 0, d.n, d.n
    FROM d JOIN live ON live.tenant_id = d.t AND live.id = d.e
    ORDER BY d.o
    ON CONFLICT (tenant_id, id) DO NOTHING
    """
)


def _sql(clause: Any) -> str:
    """A SQLAlchemy clause as PostgreSQL text, its (constant) values inlined."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


# a message quarantined by either webhooks job is left out until an operator releases it
_NOT_QUARANTINED = " AND ".join(
    _sql(
        not_quarantined(
            job, "webhook_message", literal_column("m.tenant_id"), literal_column("m.id")
        )
    )
    for job in (DELIVER_JOB, RECORD_JOB)
)

_CLAIM = text(
    f"""
    WITH due AS (
        SELECT m.tenant_id, m.id
        FROM webhook_messages m
        JOIN webhook_endpoints e ON e.tenant_id = m.tenant_id AND e.id = m.endpoint_id
        WHERE m.status = 'pending'
          AND m.next_attempt_at <= :now
          AND (m.leased_until IS NULL OR m.leased_until <= :now)
          AND e.enabled
          AND {_NOT_QUARANTINED}
          AND (NOT e.ordered OR m.seq = (
                SELECT min(h.seq) FROM webhook_messages h
                WHERE h.tenant_id = m.tenant_id AND h.endpoint_id = m.endpoint_id
                  AND h.status = 'pending'))
        ORDER BY m.next_attempt_at
        LIMIT :limit
        FOR UPDATE OF m SKIP LOCKED
    )
    UPDATE webhook_messages m
    SET leased_until = :lease_until, lease_token = :token
    FROM due, webhook_endpoints e
    WHERE m.tenant_id = due.tenant_id AND m.id = due.id
      AND e.tenant_id = m.tenant_id AND e.id = m.endpoint_id
    RETURNING m.tenant_id, m.id, m.endpoint_id, m.event_id, m.event_type, m.payload,
              m.attempts, m.cycle_attempts, m.next_attempt_at, e.url, e.secret,
              e.previous_secret, e.previous_secret_expires_at, e.rate_limit_per_s,
              e.failing_since
    """
)

_UPDATE_MESSAGES = text(
    """
    UPDATE webhook_messages m SET
        status = u.status,
        attempts = m.attempts + CASE WHEN u.counted THEN 1 ELSE 0 END,
        cycle_attempts = u.cycle_attempts,
        next_attempt_at = u.next_attempt_at,
        leased_until = NULL,
        lease_token = NULL,
        last_attempt_at = COALESCE(u.last_attempt_at, m.last_attempt_at),
        last_response_status = CASE WHEN u.counted THEN u.last_response_status
                                    ELSE m.last_response_status END,
        finished_at = u.finished_at
    FROM unnest(CAST(:tenant_id AS text[]), CAST(:id AS text[]), CAST(:lease_token AS text[]),
                CAST(:status AS text[]), CAST(:counted AS boolean[]),
                CAST(:cycle_attempts AS integer[]), CAST(:next_attempt_at AS timestamptz[]),
                CAST(:last_attempt_at AS timestamptz[]),
                CAST(:last_response_status AS integer[]), CAST(:finished_at AS timestamptz[]))
         AS u(tenant_id, id, lease_token, status, counted, cycle_attempts, next_attempt_at,
              last_attempt_at, last_response_status, finished_at)
    WHERE m.tenant_id = u.tenant_id AND m.id = u.id AND m.lease_token = u.lease_token
    RETURNING m.tenant_id, m.id
    """
)

# the endpoints of a batch of outcomes, locked first and in key order: a delete of one of
# them waits for the recorder (or has happened), so the recorder never holds a message its
# delete wants while waiting for the endpoint row the delete holds (no deadlock)
_LOCK_ENDPOINTS = text(
    """
    SELECT e.tenant_id, e.id
    FROM webhook_endpoints e
    JOIN unnest(CAST(:tenant_id AS text[]), CAST(:endpoint_id AS text[])) AS k(t, i)
      ON e.tenant_id = k.t AND e.id = k.i
    ORDER BY e.tenant_id, e.id
    FOR KEY SHARE OF e
    """
)

# attempts of the endpoints ``record`` found (and locked): the others were deleted
_INSERT_ATTEMPTS = text(
    """
    INSERT INTO webhook_attempts
        (tenant_id, endpoint_id, message_id, attempted_at, status, response_status,
         response_body, latency_ms, error)
    SELECT * FROM unnest(CAST(:tenant_id AS text[]), CAST(:endpoint_id AS text[]),
                         CAST(:message_id AS text[]), CAST(:attempted_at AS timestamptz[]),
                         CAST(:status AS text[]), CAST(:response_status AS integer[]),
                         CAST(:response_body AS text[]), CAST(:latency_ms AS integer[]),
                         CAST(:error AS text[]))
    """
)


class WebhookRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- endpoints ------------------------------------------------------------------

    async def add_endpoint(
        self, endpoint: EndpointDef, secret: str, now: datetime
    ) -> EndpointDef | None:
        """Insert ``endpoint``; None when it was new, else the existing one (unchanged)."""
        with _secret_parameters():
            inserted = await self.session.execute(
                insert(WebhookEndpoint)
                .values(
                    tenant_id=endpoint.tenant_id,
                    id=endpoint.id,
                    url=endpoint.url,
                    description=endpoint.description,
                    event_types=endpoint.event_types,
                    rate_limit_per_s=endpoint.rate_limit_per_s,
                    ordered=endpoint.ordered,
                    format=endpoint.format,
                    enabled=endpoint.enabled,
                    disabled_reason=None if endpoint.enabled else "manual",
                    secret=secret,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing()
                .returning(WebhookEndpoint.id)
            )
        if inserted.scalar_one_or_none() is not None:
            return None
        existing = await self.get(endpoint.tenant_id, endpoint.id)
        assert existing is not None
        return existing

    async def _row(
        self, tenant_id: str, endpoint_id: str, lock: bool = False
    ) -> WebhookEndpoint | None:
        stmt = select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id
        )
        if lock:
            stmt = stmt.with_for_update()
        row: WebhookEndpoint | None = await self.session.scalar(stmt)
        return row

    async def get(self, tenant_id: str, endpoint_id: str) -> EndpointDef | None:
        row = await self._row(tenant_id, endpoint_id)
        return EndpointDef.of(row) if row is not None else None

    async def of_tenant(self, tenant_id: str) -> list[EndpointDef]:
        rows = await self.session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id)
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
        return [EndpointDef.of(r) for r in rows]

    async def secrets(self, tenant_id: str, endpoint_id: str) -> EndpointSecrets | None:
        row = await self._row(tenant_id, endpoint_id)
        if row is None:
            return None
        return EndpointSecrets(row.secret, row.previous_secret, row.previous_secret_expires_at)

    async def update(
        self, tenant_id: str, endpoint_id: str, changes: dict[str, Any], now: datetime
    ) -> tuple[EndpointDef, EndpointDef] | None:
        """Apply ``changes`` (column -> value) under a row lock; (before, after) or None."""
        row = await self._row(tenant_id, endpoint_id, lock=True)
        if row is None:
            return None
        before = EndpointDef.of(row)
        for name, value in changes.items():
            setattr(row, name, value)
        row.updated_at = now
        await self.session.flush()
        return before, EndpointDef.of(row)

    async def rotate_secret(
        self, tenant_id: str, endpoint_id: str, new_secret: str, previous_expires_at: datetime
    ) -> bool:
        with _secret_parameters():
            result = await self.session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id)
                .values(
                    previous_secret=WebhookEndpoint.secret,
                    previous_secret_expires_at=previous_expires_at,
                    secret=new_secret,
                )
                .returning(WebhookEndpoint.id)
            )
        return result.scalar_one_or_none() is not None

    async def delete(self, tenant_id: str, endpoint_id: str) -> bool:
        result = await self.session.execute(
            delete(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id)
            .returning(WebhookEndpoint.id)
        )
        return result.scalar_one_or_none() is not None

    async def enabled_filters(self, tenant_ids: set[str]) -> list[EndpointFilter]:
        """Every enabled endpoint of these tenants with its event-type filter and body
        format (one query)."""
        if not tenant_ids:
            return []
        rows = await self.session.execute(
            select(
                WebhookEndpoint.tenant_id,
                WebhookEndpoint.id,
                WebhookEndpoint.event_types,
                WebhookEndpoint.format,
            )
            .where(WebhookEndpoint.tenant_id.in_(tenant_ids), WebhookEndpoint.enabled)
            .order_by(WebhookEndpoint.tenant_id, WebhookEndpoint.id)
        )
        return [EndpointFilter(t, i, list(ts), f) for t, i, ts, f in rows]

    async def disable(
        self, endpoints: list[tuple[str, str]], reason: str, now: datetime
    ) -> list[tuple[str, str, datetime | None]]:
        """Disable the still-enabled ones of ``endpoints``; return those this call disabled
        (tenant, id, failing_since), so exactly one disabling emits the event."""
        out: list[tuple[str, str, datetime | None]] = []
        for tenant_id, endpoint_id in sorted(set(endpoints)):
            result = await self.session.execute(
                update(WebhookEndpoint)
                .where(
                    WebhookEndpoint.tenant_id == tenant_id,
                    WebhookEndpoint.id == endpoint_id,
                    WebhookEndpoint.enabled,
                )
                .values(enabled=False, disabled_reason=reason, updated_at=now)
                .returning(WebhookEndpoint.failing_since)
            )
            row = result.one_or_none()
            if row is not None:
                out.append((tenant_id, endpoint_id, row[0]))
        return out

    async def health(
        self,
        recovered: list[tuple[str, str]],
        failing: dict[tuple[str, str], tuple[datetime, bool]],
    ) -> None:
        """Endpoints that just succeeded are healthy again; failing ones are failing since
        the given time (only set when not failing yet, unless ``overwrite``)."""
        for tenant_id, endpoint_id in sorted(set(recovered)):
            await self.session.execute(
                update(WebhookEndpoint)
                .where(
                    WebhookEndpoint.tenant_id == tenant_id,
                    WebhookEndpoint.id == endpoint_id,
                    WebhookEndpoint.failing_since.is_not(None),
                )
                .values(failing_since=None)
            )
        for (tenant_id, endpoint_id), (since, overwrite) in sorted(failing.items()):
            stmt = update(WebhookEndpoint).where(
                WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id
            )
            if not overwrite:
                stmt = stmt.where(WebhookEndpoint.failing_since.is_(None))
            await self.session.execute(stmt.values(failing_since=since))

    # --- messages ------------------------------------------------------------------

    async def add_messages(self, messages: list[NewMessage]) -> int:
        """Insert messages (one statement); ones that exist already are left alone."""
        if not messages:
            return 0
        result = await self.session.execute(_INSERT_MESSAGES, _columns(messages))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def claim_due(self, now: datetime, limit: int, lease_until: datetime) -> list[Claimed]:
        """Lease up to ``limit`` due messages of enabled endpoints (skipping rows another
        transaction holds); for an ordered endpoint only its oldest pending message."""
        token = str(uuid.uuid4())
        result = await self.session.execute(
            _CLAIM, {"now": now, "limit": limit, "lease_until": lease_until, "token": token}
        )
        rows = sorted(result.all(), key=lambda r: r.next_attempt_at)
        return [
            Claimed(
                tenant_id=r.tenant_id,
                id=r.id,
                endpoint_id=r.endpoint_id,
                event_id=r.event_id,
                event_type=r.event_type,
                payload=r.payload,
                attempts=r.attempts,
                cycle_attempts=r.cycle_attempts,
                lease_token=token,
                url=r.url,
                secrets=EndpointSecrets(r.secret, r.previous_secret, r.previous_secret_expires_at),
                rate_limit_per_s=r.rate_limit_per_s,
                failing_since=r.failing_since,
            )
            for r in rows
        ]

    async def record(
        self,
        updates: list[MessageUpdate],
        attempts: list[AttemptRow],
        endpoints: set[tuple[str, str]],
    ) -> set[tuple[str, str]]:
        """Write outcomes: the attempts of messages that still exist, and the messages
        still under the lease that sent them. ``endpoints`` are the (tenant, endpoint id)
        pairs of the batch; locked first, so a concurrent delete waits or has happened.
        Outcomes of a deleted endpoint or message are dropped, never an error. Returns the
        (tenant, message id) pairs whose update applied."""
        live: set[tuple[str, str]] = set()
        if endpoints:
            keys = sorted(endpoints)
            found = await self.session.execute(
                _LOCK_ENDPOINTS,
                {"tenant_id": [t for t, _ in keys], "endpoint_id": [e for _, e in keys]},
            )
            live = {(r[0], r[1]) for r in found}
        applied: set[tuple[str, str]] = set()
        if updates:
            ordered = sorted(updates, key=lambda u: (u.tenant_id, u.id))  # fixed lock order
            result = await self.session.execute(_UPDATE_MESSAGES, _columns(ordered))
            applied = {(r[0], r[1]) for r in result}
        # messages go only with their endpoint (ON DELETE CASCADE), and the live endpoints
        # are locked until this commits: filtering by endpoint here is exact, and cheaper
        # than a join per batch (which the planner ran as a scan of every message)
        kept = [a for a in attempts if (a.tenant_id, a.endpoint_id) in live]
        if kept:
            await self.session.execute(_INSERT_ATTEMPTS, _columns(kept))
        return applied

    async def message(
        self, tenant_id: str, endpoint_id: str, message_id: str
    ) -> MessageView | None:
        row = await self.session.scalar(
            select(WebhookMessage).where(
                WebhookMessage.tenant_id == tenant_id,
                WebhookMessage.endpoint_id == endpoint_id,
                WebhookMessage.id == message_id,
            )
        )
        return _message_view(row) if row is not None else None

    async def messages(
        self,
        tenant_id: str,
        endpoint_id: str,
        *,
        status: str | None = None,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> list[tuple[int, MessageView]]:
        """Newest first, with each one's position (for paging with ``before_seq``)."""
        stmt = select(WebhookMessage).where(
            WebhookMessage.tenant_id == tenant_id, WebhookMessage.endpoint_id == endpoint_id
        )
        if status is not None:
            stmt = stmt.where(WebhookMessage.status == status)
        if before_seq is not None:
            stmt = stmt.where(WebhookMessage.seq < before_seq)
        rows = await self.session.scalars(stmt.order_by(WebhookMessage.seq.desc()).limit(limit))
        return [(r.seq, _message_view(r)) for r in rows]

    async def attempts(
        self,
        tenant_id: str,
        endpoint_id: str,
        *,
        message_id: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[AttemptView]:
        """Newest first: an endpoint's attempts, or one message's."""
        stmt = select(WebhookAttempt).where(
            WebhookAttempt.tenant_id == tenant_id, WebhookAttempt.endpoint_id == endpoint_id
        )
        if message_id is not None:
            stmt = stmt.where(WebhookAttempt.message_id == message_id)
        if before_id is not None:
            stmt = stmt.where(WebhookAttempt.id < before_id)
        rows = await self.session.scalars(stmt.order_by(WebhookAttempt.id.desc()).limit(limit))
        return [
            AttemptView(
                id=r.id,
                message_id=r.message_id,
                endpoint_id=r.endpoint_id,
                attempted_at=r.attempted_at,
                status=r.status,
                response_status=r.response_status,
                response_body=r.response_body,
                latency_ms=r.latency_ms,
                error=r.error,
            )
            for r in rows
        ]

    async def reschedule(
        self,
        tenant_id: str,
        endpoint_id: str,
        now: datetime,
        *,
        message_id: str | None = None,
        failed_since: datetime | None = None,
    ) -> int:
        """Make messages pending and due now with a fresh retry schedule (same ids): one
        message (resend), or every failed one created since ``failed_since`` (recover)."""
        stmt = update(WebhookMessage).where(
            WebhookMessage.tenant_id == tenant_id, WebhookMessage.endpoint_id == endpoint_id
        )
        if message_id is not None:
            stmt = stmt.where(WebhookMessage.id == message_id)
        if failed_since is not None:
            stmt = stmt.where(
                WebhookMessage.status == "failed", WebhookMessage.created_at >= failed_since
            )
        result = await self.session.execute(
            stmt.values(
                status="pending",
                cycle_attempts=0,
                next_attempt_at=now,
                leased_until=None,
                lease_token=None,
                finished_at=None,
            )
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _message_view(r: WebhookMessage) -> MessageView:
    return MessageView(
        id=r.id,
        endpoint_id=r.endpoint_id,
        event_id=r.event_id,
        event_type=r.event_type,
        status=r.status,
        attempts=r.attempts,
        next_attempt_at=r.next_attempt_at if r.status == "pending" else None,
        last_attempt_at=r.last_attempt_at,
        last_response_status=r.last_response_status,
        created_at=r.created_at,
        finished_at=r.finished_at,
    )
