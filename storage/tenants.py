"""Tenants and their API keys (stored as SHA-256 digests, compared in constant time)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, LargeBinary, String, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base

KEY_PREFIX = "bsk"


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    __tablename__ = "api_keys"

    # the public, non-secret part of the key: used to find the row, never to authenticate
    lookup: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class IssuedKey:
    tenant_id: str
    secret: str  # shown once; only its digest is stored


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _split(secret: str) -> str | None:
    parts = secret.split("_", 2)  # the secret part may itself contain "_"
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


class TenantRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, tenant_id: str, name: str | None = None) -> bool:
        """Create the tenant; False when it already exists."""
        result = await self.session.execute(
            insert(Tenant)
            .values(id=tenant_id, name=name or tenant_id)
            .on_conflict_do_nothing()
            .returning(Tenant.id)
        )
        return result.scalar_one_or_none() is not None

    async def exists(self, tenant_id: str) -> bool:
        return await self.session.get(Tenant, tenant_id) is not None

    async def existing(self, tenant_ids: set[str]) -> set[str]:
        rows = await self.session.scalars(select(Tenant.id).where(Tenant.id.in_(tenant_ids)))
        return set(rows)

    async def issue_key(self, tenant_id: str) -> IssuedKey:
        lookup = secrets.token_hex(8)
        secret = f"{KEY_PREFIX}_{lookup}_{secrets.token_urlsafe(32)}"
        self.session.add(ApiKey(lookup=lookup, tenant_id=tenant_id, digest=_digest(secret)))
        await self.session.flush()
        return IssuedKey(tenant_id=tenant_id, secret=secret)

    async def authenticate(self, secret: str) -> str | None:
        """The tenant the key belongs to, or None (unknown, malformed, revoked)."""
        lookup = _split(secret)
        if lookup is None:
            return None
        row = await self.session.get(ApiKey, lookup)
        expected = row.digest if row is not None else _digest("")
        ok = hmac.compare_digest(expected, _digest(secret))
        if row is None or not ok or row.revoked_at is not None:
            return None
        return row.tenant_id
