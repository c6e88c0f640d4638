"""The entitlements worker's tick: rows it claims (locked, quarantined items left out) and
the deployment's token signing keys (a part of ``EntitlementRepository``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import (
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.entitlements.models import (
    ConfigRow,
    GrantRow,
    LimitHitRow,
    SigningKeyRow,
    StaleRow,
    StandingRow,
    UnpaidRow,
)
from storage.entitlements.sets import (
    DEFAULT_GRACE_HOURS,
    next_boundary,
    pairs_table,
)
from storage.quarantine import not_quarantined


class TickClaims:
    session: AsyncSession  # EntitlementRepository's

    # --- the worker's tick (claims: rows locked, quarantined items left out) ------------------

    async def claim_stale(
        self, limit: int, *, job: str, only: Sequence[tuple[str, str]] | None = None
    ) -> list[tuple[str, str, str]]:
        q = select(StaleRow.tenant_id, StaleRow.customer, StaleRow.reason).where(
            not_quarantined(job, "customer", StaleRow.tenant_id, StaleRow.customer)
        )
        if only is not None:
            v = pairs_table(only)
            q = q.join(v, and_(StaleRow.tenant_id == v.c.t, StaleRow.customer == v.c.c))
        rows = await self.session.execute(
            q.order_by(StaleRow.marked_at).limit(limit).with_for_update(skip_locked=True)
        )
        return [(t, c, r) for t, c, r in rows]

    async def unmark_stale(self, pairs: Sequence[tuple[str, str]]) -> None:
        if pairs:
            v = pairs_table(pairs)
            await self.session.execute(
                delete(StaleRow).where(StaleRow.tenant_id == v.c.t, StaleRow.customer == v.c.c)
            )

    async def claim_graces_ended(
        self, now: datetime, limit: int, *, job: str, only: Sequence[tuple[str, str]] | None = None
    ) -> list[tuple[str, str]]:
        """Customers whose grace ended while their standing is still active."""
        grace = func.coalesce(ConfigRow.payment_grace_hours, DEFAULT_GRACE_HOURS)
        q = (
            select(UnpaidRow.tenant_id, UnpaidRow.customer)
            .outerjoin(ConfigRow, ConfigRow.tenant_id == UnpaidRow.tenant_id)
            .outerjoin(
                StandingRow,
                and_(
                    StandingRow.tenant_id == UnpaidRow.tenant_id,
                    StandingRow.customer == UnpaidRow.customer,
                ),
            )
            .where(
                UnpaidRow.exhausted.is_(False),
                UnpaidRow.failed_at + func.make_interval(0, 0, 0, 0, grace) <= now,
                or_(StandingRow.status.is_(None), StandingRow.status == "active"),
                not_quarantined(job, "customer", UnpaidRow.tenant_id, UnpaidRow.customer),
            )
        )
        if only is not None:
            v = pairs_table(only)
            q = q.join(v, and_(UnpaidRow.tenant_id == v.c.t, UnpaidRow.customer == v.c.c))
        rows = await self.session.execute(
            q.order_by(UnpaidRow.failed_at)
            .limit(limit)
            .with_for_update(of=UnpaidRow, skip_locked=True)
        )
        return sorted({(t, c) for t, c in rows})

    async def claim_ended_hits(
        self, now: datetime, limit: int, *, job: str, only: Sequence[tuple[str, str]] | None = None
    ) -> list[LimitHitRow]:
        """Hard limit hits of periods that ended, not restored yet."""
        q = select(LimitHitRow).where(
            LimitHitRow.restored_at.is_(None),
            LimitHitRow.limit_mode == "hard",
            LimitHitRow.period_end <= now,
            not_quarantined(job, "customer", LimitHitRow.tenant_id, LimitHitRow.customer),
        )
        if only is not None:
            v = pairs_table(only)
            q = q.join(v, and_(LimitHitRow.tenant_id == v.c.t, LimitHitRow.customer == v.c.c))
        rows = await self.session.scalars(
            q.order_by(LimitHitRow.period_end).limit(limit).with_for_update(skip_locked=True)
        )
        return list(rows)

    async def claim_grants_due(
        self, now: datetime, limit: int, *, job: str, only: Sequence[tuple[str, str]] | None = None
    ) -> list[tuple[str, str]]:
        """Customers with a grant that started or expired since it was last announced."""
        q = select(GrantRow.tenant_id, GrantRow.customer).where(
            GrantRow.due_at <= now,
            not_quarantined(job, "customer", GrantRow.tenant_id, GrantRow.customer),
        )
        if only is not None:
            v = pairs_table(only)
            q = q.join(v, and_(GrantRow.tenant_id == v.c.t, GrantRow.customer == v.c.c))
        rows = await self.session.execute(
            q.order_by(GrantRow.due_at).limit(limit).with_for_update(of=GrantRow, skip_locked=True)
        )
        return sorted({(t, c) for t, c in rows})

    async def grants_announced(self, pairs: Sequence[tuple[str, str]], now: datetime) -> None:
        """The customers' grants due by ``now`` are announced: each waits for its next
        boundary (its start or expiry after ``now``), or for nothing."""
        if not pairs:
            return
        v = pairs_table(pairs)
        await self.session.execute(
            update(GrantRow)
            .where(
                GrantRow.tenant_id == v.c.t,
                GrantRow.customer == v.c.c,
                GrantRow.due_at <= now,
            )
            .values(due_at=next_boundary(GrantRow.starts_at, GrantRow.expires_at, now))
        )

    # --- the token signing keys (the deployment's, not a tenant's) ----------------------------

    async def current_signing_key(self) -> SigningKeyRow | None:
        """The newest key (the one the next rotation retires)."""
        row: SigningKeyRow | None = await self.session.scalar(
            select(SigningKeyRow).where(SigningKeyRow.retired_at.is_(None))
        )
        return row

    async def signing_key(self, now: datetime, lead: timedelta) -> SigningKeyRow | None:
        """The key that signs at ``now``: the newest published for at least ``lead`` (so a
        gateway's cached JWKS already has it) and still signing; the newest of all when
        none is that old (the deployment's first key)."""
        rows = list(
            await self.session.scalars(
                select(SigningKeyRow)
                .where(or_(SigningKeyRow.retired_at.is_(None), SigningKeyRow.retired_at > now))
                .order_by(SigningKeyRow.created_at.desc(), SigningKeyRow.kid)
                .limit(2)
            )
        )
        return next((r for r in rows if r.created_at <= now - lead), rows[0] if rows else None)

    async def published_keys(self, retired_after: datetime) -> list[SigningKeyRow]:
        """The current key and those retired after ``retired_after`` (tokens they signed may
        still be valid), oldest first."""
        rows = await self.session.scalars(
            select(SigningKeyRow)
            .where(
                or_(SigningKeyRow.retired_at.is_(None), SigningKeyRow.retired_at > retired_after)
            )
            .order_by(SigningKeyRow.created_at, SigningKeyRow.kid)
        )
        return list(rows)

    async def rotate_signing_key(
        self, kid: str, public_key: str, private_key: str, now: datetime, lead: timedelta
    ) -> bool:
        """Publish this key from ``now``; it signs from ``now + lead``, when the current key
        (if any) stops signing. False when another writer rotated first (this transaction
        then changes nothing it keeps)."""
        await self.session.execute(
            update(SigningKeyRow)
            .where(SigningKeyRow.retired_at.is_(None))
            .values(retired_at=now + lead, current=None)
        )
        added = await self.session.execute(
            insert(SigningKeyRow)
            .values(kid=kid, public_key=public_key, private_key=private_key, created_at=now)
            .on_conflict_do_nothing()
            .returning(SigningKeyRow.kid)
        )
        return added.first() is not None
