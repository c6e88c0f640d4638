"""Receipts: per-tenant Ed25519 signing keys (private keys encrypted), one hash chain per
tenant and customer (its head), and the receipts themselves (docs/receipts.md, ADR 0052).

A chain stays linear because a receipt is appended only under its chain head's row lock
(``SELECT … FOR UPDATE``) in the same transaction that inserts it, and
``(tenant_id, customer, seq)`` is unique: a second writer waits, then continues from the
head the first one committed; a transaction killed half-way leaves nothing behind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base


class ReceiptKeyRow(Base):
    __tablename__ = "receipt_keys"
    __table_args__ = (
        Index(
            "ux_receipt_keys_current",
            "tenant_id",
            unique=True,
            postgresql_where=text("not_after IS NULL"),
        ),
    )

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    kid: Mapped[str] = mapped_column(String(64), primary_key=True, comment="RFC 7638 thumbprint")
    public_key: Mapped[str] = mapped_column(String(64), comment="Ed25519, raw, base64url")
    private_key: Mapped[str] = mapped_column(Text, comment="Fernet ciphertext (enc:…)")
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_after: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="Set when rotated out; none while current"
    )


class ReceiptChainRow(Base):
    """The head of one chain: its last sequence number and hash."""

    __tablename__ = "receipt_chains"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    customer: Mapped[str] = mapped_column(String(256), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, comment="0 before the first receipt")
    hash: Mapped[str] = mapped_column(String(64), comment="SHA-256 hex of the last payload")


class ReceiptRow(Base):
    __tablename__ = "receipts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "customer", "seq", name="uq_receipts_chain_seq"),
        UniqueConstraint("tenant_id", "kind", "document_id", name="uq_receipts_document"),
        Index("ix_receipts_issued", "tenant_id", "issued_at", "id"),
    )

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    customer: Mapped[str] = mapped_column(String(256))
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    document_id: Mapped[str] = mapped_column(String(128))
    kid: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128), comment="Ed25519, base64url")
    payload: Mapped[str] = mapped_column(Text, comment="Canonical JSON (RFC 8785), signed")


ChainKey = tuple[str, str]  # (tenant_id, customer)

_EXISTING = text(
    """
    SELECT r.tenant_id, r.id
    FROM receipts AS r
    JOIN unnest(CAST(:t AS text[]), CAST(:i AS text[])) AS v(t, i)
      ON r.tenant_id = v.t AND r.id = v.i
    """
)
_ADD_HEADS = text(
    """
    INSERT INTO receipt_chains (tenant_id, customer, seq, hash)
    SELECT t, c, 0, :genesis FROM unnest(CAST(:t AS text[]), CAST(:c AS text[])) AS v(t, c)
    ON CONFLICT DO NOTHING
    """
)
_LOCK_HEADS = text(
    """
    SELECT h.tenant_id, h.customer, h.seq, h.hash
    FROM receipt_chains AS h
    JOIN unnest(CAST(:t AS text[]), CAST(:c AS text[])) AS v(t, c)
      ON h.tenant_id = v.t AND h.customer = v.c
    ORDER BY h.tenant_id, h.customer
    FOR UPDATE OF h
    """
)


class ReceiptRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def clock(self) -> datetime:
        """The database's clock now (not the transaction's start): one clock for every
        replica, read after the locks are held, so a chain's times never go back."""
        now: datetime = (await self.session.execute(select(func.clock_timestamp()))).scalar_one()
        return now

    # --- keys ---------------------------------------------------------------------------

    async def current_keys(self, tenant_ids: Iterable[str]) -> dict[str, ReceiptKeyRow]:
        """The current key of each tenant, share-locked (a rotation waits for the receipts
        signed with it), in tenant order."""
        rows = await self.session.scalars(
            select(ReceiptKeyRow)
            .where(ReceiptKeyRow.tenant_id.in_(sorted(set(tenant_ids))))
            .where(ReceiptKeyRow.not_after.is_(None))
            .order_by(ReceiptKeyRow.tenant_id)
            .with_for_update(read=True)
        )
        return {r.tenant_id: r for r in rows}

    async def add_current_key(
        self, tenant_id: str, kid: str, public_key: str, private_key: str, not_before: datetime
    ) -> bool:
        """Adds the tenant's current key unless it has one (False: another writer's won)."""
        stmt = (
            insert(ReceiptKeyRow)
            .values(
                tenant_id=tenant_id,
                kid=kid,
                public_key=public_key,
                private_key=private_key,
                not_before=not_before,
                not_after=None,
            )
            .on_conflict_do_nothing()
            .returning(ReceiptKeyRow.kid)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def retire_current_key(self, tenant_id: str) -> ReceiptKeyRow | None:
        """Locks the tenant's current key (waiting for receipts being signed with it) and
        ends its validity at the database's clock; None when it has none."""
        row = await self.session.scalar(
            select(ReceiptKeyRow)
            .where(ReceiptKeyRow.tenant_id == tenant_id, ReceiptKeyRow.not_after.is_(None))
            .with_for_update()
        )
        if row is None:
            return None
        row.not_after = await self.clock()
        await self.session.flush()
        return row

    async def count_keys(self, tenant_id: str) -> int:
        q = select(func.count()).select_from(ReceiptKeyRow)
        return int(await self.session.scalar(q.where(ReceiptKeyRow.tenant_id == tenant_id)) or 0)

    async def keys(self, tenant_id: str) -> list[ReceiptKeyRow]:
        """Every key of the tenant, oldest first."""
        rows = await self.session.scalars(
            select(ReceiptKeyRow)
            .where(ReceiptKeyRow.tenant_id == tenant_id)
            .order_by(ReceiptKeyRow.not_before, ReceiptKeyRow.kid)
        )
        return list(rows)

    # --- chains -------------------------------------------------------------------------

    async def existing(self, ids: Iterable[ChainKey]) -> set[ChainKey]:
        """Which of these ``(tenant_id, receipt id)`` were issued already."""
        wanted = sorted(set(ids))
        if not wanted:
            return set()
        # arrays, not a row-value IN list: PostgreSQL refuses a list of ~10,000 pairs (stack
        # depth limit exceeded), which fails a full batch before it is split
        rows = await self.session.execute(
            _EXISTING, {"t": [t for t, _ in wanted], "i": [i for _, i in wanted]}
        )
        return {(t, i) for t, i in rows}

    async def lock_heads(
        self, chains: Iterable[ChainKey], genesis: str
    ) -> dict[ChainKey, tuple[int, str]]:
        """The heads (seq, hash) of these chains, created (seq 0) where missing, locked for this
        transaction — always in the same order, so two writers never deadlock."""
        wanted = sorted(set(chains))
        if not wanted:
            return {}
        # two arrays, not four bind parameters per chain: a batch may open more chains than a
        # statement may have parameters (32,767; asyncpg refuses it client-side, and the
        # runtime would retry that batch forever); and the statements are compiled once
        arrays = {"t": [t for t, _ in wanted], "c": [c for _, c in wanted]}
        await self.session.execute(_ADD_HEADS, {**arrays, "genesis": genesis})
        rows = await self.session.execute(_LOCK_HEADS, arrays)
        return {(t, c): (s, h) for t, c, s, h in rows}

    async def append(self, tenant_id: str, receipts: Sequence[ReceiptRow]) -> None:
        """Inserts receipts (their chains' heads locked by this transaction) and moves each
        chain's head to its last one."""
        if not receipts:
            return
        self.session.add_all(receipts)
        await self.session.flush()
        last: dict[str, ReceiptRow] = {}
        for r in receipts:
            if r.customer not in last or r.seq > last[r.customer].seq:
                last[r.customer] = r
        heads = [
            {"tenant_id": tenant_id, "customer": c, "seq": r.seq, "hash": r.hash}
            for c, r in sorted(last.items())
        ]
        await self.session.execute(update(ReceiptChainRow), heads)  # by primary key, batched

    # --- reads --------------------------------------------------------------------------

    async def get(self, tenant_id: str, id: str) -> ReceiptRow | None:
        return await self.session.get(ReceiptRow, (tenant_id, id))

    async def page(
        self, tenant_id: str, customer: str, *, after_seq: int = 0, limit: int = 100
    ) -> list[ReceiptRow]:
        """A customer's receipts in chain order, after ``after_seq``."""
        rows = await self.session.scalars(
            select(ReceiptRow)
            .where(
                ReceiptRow.tenant_id == tenant_id,
                ReceiptRow.customer == customer,
                ReceiptRow.seq > after_seq,
            )
            .order_by(ReceiptRow.seq)
            .limit(limit)
        )
        return list(rows)

    async def chain(
        self, tenant_id: str, customer: str, *, page_size: int = 500
    ) -> AsyncIterator[ReceiptRow]:
        """Every receipt of one chain in order, read a page at a time."""
        after = 0
        while True:
            rows = await self.page(tenant_id, customer, after_seq=after, limit=page_size)
            for r in rows:
                yield r
            if len(rows) < page_size:
                return
            after = rows[-1].seq

    async def heads(
        self, tenant_id: str, after: str | None, limit: int
    ) -> list[tuple[str, int, str]]:
        """The next ``limit`` chains (customer, seq, hash) of the tenant that have a receipt,
        by customer, unlocked: what each chain's last receipt must be (the audit)."""
        q = select(ReceiptChainRow.customer, ReceiptChainRow.seq, ReceiptChainRow.hash).where(
            ReceiptChainRow.tenant_id == tenant_id, ReceiptChainRow.seq > 0
        )
        if after is not None:
            q = q.where(ReceiptChainRow.customer > after)
        rows = await self.session.execute(q.order_by(ReceiptChainRow.customer).limit(limit))
        return [(str(c), int(n), str(h)) for c, n, h in rows]

    async def head(self, tenant_id: str, customer: str) -> tuple[str, int, str] | None:
        """One customer's chain (customer, seq, hash), if it has a receipt."""
        row = await self.session.get(ReceiptChainRow, (tenant_id, customer))
        return None if row is None or row.seq == 0 else (row.customer, row.seq, row.hash)
