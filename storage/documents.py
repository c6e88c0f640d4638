"""Documents: the tenant's branding, rendered PDFs stored under the SHA-256 of their bytes,
and which PDF is each invoice's (docs/documents.md, ADR 0054).

An invoice is rendered once: ``invoice_documents`` has one row per invoice, inserted in the
same transaction as its blob (``ON CONFLICT DO NOTHING`` on both), so a replay or a second
replica renders at most once more and stores nothing twice."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    func,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base
from storage.tenants import Tenant

PDF = "application/pdf"


class BrandingRow(Base):
    __tablename__ = "document_branding"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB, comment="schemas.documents.Branding")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DocumentBlob(Base):
    """A rendered document's bytes, addressed by their SHA-256 (per tenant)."""

    __tablename__ = "document_blobs"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(64), server_default="application/pdf")
    size: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class InvoiceDocument(Base):
    """Which blob is an invoice's PDF, and the hosted link printed on it."""

    __tablename__ = "invoice_documents"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    invoice_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    customer: Mapped[str] = mapped_column(String(256), index=True)
    number: Mapped[str | None] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    locale: Mapped[str] = mapped_column(String(8))
    hosted_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    rendered_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


@dataclass(frozen=True)
class NewDocument:
    """A rendered invoice PDF to store: its bytes and the row that says it is the invoice's."""

    tenant_id: str
    invoice_id: str
    customer: str
    number: str | None
    locale: str
    hosted_expires_at: datetime
    rendered_at: datetime
    content: bytes
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.content).hexdigest())

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant_id, self.invoice_id)


class DocumentRepository:
    """Branding, blobs and invoice documents; every method takes the tenant (or keys
    carrying it)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- branding -------------------------------------------------------------------------

    async def branding(self, tenant_id: str) -> BrandingRow | None:
        return await self.session.get(BrandingRow, tenant_id)

    async def brandings(self, tenant_ids: Iterable[str]) -> dict[str, BrandingRow]:
        rows = await self.session.scalars(
            select(BrandingRow).where(BrandingRow.tenant_id.in_(set(tenant_ids)))
        )
        return {r.tenant_id: r for r in rows}

    async def set_branding(self, tenant_id: str, spec: dict[str, Any]) -> datetime:
        """Replace the tenant's branding (whole); when it was set."""
        stmt = insert(BrandingRow).values(tenant_id=tenant_id, spec=spec)
        result = await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[BrandingRow.tenant_id],
                set_={"spec": stmt.excluded.spec, "updated_at": func.now()},
            ).returning(BrandingRow.updated_at)
        )
        updated: datetime = result.scalar_one()
        return updated

    async def tenant_names(self, tenant_ids: Iterable[str]) -> dict[str, str]:
        """The name of each tenant that exists (a missing one is left out)."""
        rows = await self.session.execute(
            select(Tenant.id, Tenant.name).where(Tenant.id.in_(set(tenant_ids)))
        )
        return {id: name for id, name in rows}

    # --- invoice documents ----------------------------------------------------------------

    async def rendered(self, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of ``(tenant, invoice)`` already have their document."""
        wanted = set(keys)
        if not wanted:
            return set()
        rows = await self.session.execute(
            select(InvoiceDocument.tenant_id, InvoiceDocument.invoice_id).where(
                tuple_(InvoiceDocument.tenant_id, InvoiceDocument.invoice_id).in_(sorted(wanted))
            )
        )
        return {(t, i) for t, i in rows}

    async def store(self, documents: Sequence[NewDocument]) -> set[tuple[str, str]]:
        """Store each document's blob (once per tenant and content) and its invoice row (once
        per invoice): the ``(tenant, invoice)`` whose row is new here. A document whose
        invoice already has one (a replay, another replica) stores nothing: its blob is
        written only with a new row."""
        if not documents:
            return set()
        rows = await self.session.execute(
            insert(InvoiceDocument)
            .values(
                [
                    {
                        "tenant_id": d.tenant_id,
                        "invoice_id": d.invoice_id,
                        "customer": d.customer,
                        "number": d.number,
                        "sha256": d.sha256,
                        "locale": d.locale,
                        "hosted_expires_at": d.hosted_expires_at,
                        "rendered_at": d.rendered_at,
                    }
                    for d in {d.key: d for d in documents}.values()
                ]
            )
            .on_conflict_do_nothing()
            .returning(InvoiceDocument.tenant_id, InvoiceDocument.invoice_id)
        )
        new = {(t, i) for t, i in rows}
        blobs = {(d.tenant_id, d.sha256): d for d in documents if d.key in new}
        if blobs:
            await self.session.execute(
                insert(DocumentBlob)
                .values(
                    [
                        {
                            "tenant_id": d.tenant_id,
                            "sha256": d.sha256,
                            "media_type": PDF,
                            "size": len(d.content),
                            "content": d.content,
                        }
                        for d in blobs.values()
                    ]
                )
                .on_conflict_do_nothing()
            )
        return new

    async def invoice_document(self, tenant_id: str, invoice_id: str) -> InvoiceDocument | None:
        return await self.session.get(InvoiceDocument, (tenant_id, invoice_id))

    async def invoice_pdf(
        self, tenant_id: str, invoice_id: str
    ) -> tuple[InvoiceDocument, bytes] | None:
        """The invoice's document and its PDF's bytes; None until it is rendered."""
        row = (
            await self.session.execute(
                select(InvoiceDocument, DocumentBlob.content)
                .join(
                    DocumentBlob,
                    (DocumentBlob.tenant_id == InvoiceDocument.tenant_id)
                    & (DocumentBlob.sha256 == InvoiceDocument.sha256),
                )
                .where(
                    InvoiceDocument.tenant_id == tenant_id,
                    InvoiceDocument.invoice_id == invoice_id,
                )
            )
        ).first()
        return None if row is None else (row[0], row[1])

    async def customer_documents(
        self, tenant_id: str, customer: str, limit: int = 100
    ) -> list[InvoiceDocument]:
        """The customer's invoice documents (``customer``: its external id), newest first."""
        rows = await self.session.scalars(
            select(InvoiceDocument)
            .where(InvoiceDocument.tenant_id == tenant_id, InvoiceDocument.customer == customer)
            .order_by(InvoiceDocument.rendered_at.desc(), InvoiceDocument.invoice_id)
            .limit(limit)
        )
        return list(rows)
