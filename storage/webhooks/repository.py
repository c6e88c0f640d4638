"""The webhooks repository: every read and write of endpoints, messages and attempts.

A message is pending until it succeeds or its retry schedule is exhausted. The dispatcher
claims due messages with ``FOR UPDATE SKIP LOCKED`` and leases them (``leased_until`` and a
``lease_token``) for the time a delivery can take; outcomes are recorded only under the
lease that sent them, and an expired lease (a crashed process) makes the message due again.
Every statement on the hot path is set-based (statements.py).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from storage.webhooks.statements import (
    CLAIM,
    INSERT_ATTEMPTS,
    INSERT_MESSAGES,
    LOCK_ENDPOINTS,
    UPDATE_MESSAGES,
)
from workers.webhooks.domain import (
    AttemptRow,
    Claimed,
    EndpointDef,
    EndpointFilter,
    EndpointSecrets,
    MessageUpdate,
    NewMessage,
)
from workers.webhooks.views import AttemptView, MessageView


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


def _endpoint_def(row: WebhookEndpoint) -> EndpointDef:
    return EndpointDef(**{f.name: getattr(row, f.name) for f in fields(EndpointDef)})


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
        return _endpoint_def(row) if row is not None else None

    async def of_tenant(self, tenant_id: str) -> list[EndpointDef]:
        rows = await self.session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id)
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
        return [_endpoint_def(r) for r in rows]

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
        before = _endpoint_def(row)
        for name, value in changes.items():
            setattr(row, name, value)
        row.updated_at = now
        await self.session.flush()
        return before, _endpoint_def(row)

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
        result = await self.session.execute(INSERT_MESSAGES, _columns(messages))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def claim_due(self, now: datetime, limit: int, lease_until: datetime) -> list[Claimed]:
        """Lease up to ``limit`` due messages of enabled endpoints (skipping rows another
        transaction holds); for an ordered endpoint only its oldest pending message."""
        token = str(uuid.uuid4())
        result = await self.session.execute(
            CLAIM, {"now": now, "limit": limit, "lease_until": lease_until, "token": token}
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
                LOCK_ENDPOINTS,
                {"tenant_id": [t for t, _ in keys], "endpoint_id": [e for _, e in keys]},
            )
            live = {(r[0], r[1]) for r in found}
        applied: set[tuple[str, str]] = set()
        if updates:
            ordered = sorted(updates, key=lambda u: (u.tenant_id, u.id))  # fixed lock order
            result = await self.session.execute(UPDATE_MESSAGES, _columns(ordered))
            applied = {(r[0], r[1]) for r in result}
        # messages go only with their endpoint (ON DELETE CASCADE), and the live endpoints
        # are locked until this commits: filtering by endpoint here is exact, and cheaper
        # than a join per batch (which the planner ran as a scan of every message)
        kept = [a for a in attempts if (a.tenant_id, a.endpoint_id) in live]
        if kept:
            await self.session.execute(INSERT_ATTEMPTS, _columns(kept))
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
