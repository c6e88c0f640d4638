"""Documents subscribers: each ``invoice.finalized`` is rendered to a PDF once, stored by
the SHA-256 of its bytes, and announced by ``document.rendered``; branding is a command.

A PDF takes tens of milliseconds to render, so it is rendered off the event loop and before
the batch's transaction writes anything: what rendering needs (the tenant's name and
branding, which invoices already have a document) is read in a short session of its own,
then every PDF of the batch is rendered with no database connection held, then one
transaction stores them all (``ON CONFLICT DO NOTHING``) and emits ``document.rendered`` for
the rows that are new. A replay, a second replica or a restart after ``kill -9`` renders at
most once more and stores and announces nothing twice (docs/documents.md)."""

from __future__ import annotations

import asyncio
import json
from typing import cast

import structlog
from pydantic import ValidationError

from schemas import groups, topics
from schemas.documents import Branding, ConfigureBranding
from schemas.envelope import WIRE, AnyEvent, CloudEvent
from schemas.invoicing import InvoiceFinalized
from storage.documents import DocumentRepository, NewDocument
from storage.invoicing.hierarchy import HierarchyRepository
from workers.documents import service
from workers.documents.commands import COMMANDS
from workers.documents.links import link_url
from workers.documents.render import render_invoice_pdf
from workers.documents.sections import section_customers
from workers.runtime import Batch, Message, Runtime, Tx
from workers.runtime.errors import describe

log = structlog.get_logger("billstream.documents")


def decode_event(raw: bytes) -> CloudEvent:
    """``invoice.finalized`` fully validated; any other event by its envelope only."""
    obj = json.loads(raw)
    if isinstance(obj, dict) and obj.get("type") == "invoice.finalized":
        return InvoiceFinalized.model_validate(obj, context=WIRE)
    return AnyEvent.model_validate(obj, context=WIRE)


def decode_command(raw: bytes) -> ConfigureBranding:
    return ConfigureBranding.model_validate_json(raw, context=WIRE)


async def _render(job: service.Job, hosted_url: str, names: dict[str, str]) -> bytes:
    """The invoice's PDF, rendered in a thread (``names``: of its sections' customers). A
    logo the renderer cannot decode (its header is a PNG's or JPEG's, the rest is not) is
    left off rather than failing every invoice of the tenant until its branding is fixed."""

    def render(branding: Branding) -> bytes:
        return render_invoice_pdf(
            job.invoice,
            branding,
            locale=job.locale,
            hosted_url=hosted_url,
            rendered_at=job.rendered_at,
            names=names,
        )

    try:
        return await asyncio.to_thread(render, job.branding)
    except Exception as e:
        if job.branding.logo is None:
            raise
        log.warning(
            "invoice rendered without the tenant's logo: it cannot be decoded",
            tenantid=job.tenant_id,
            invoice_id=job.invoice.invoice_id,
            error=describe(e),
        )
        return await asyncio.to_thread(render, job.branding.model_copy(update={"logo": None}))


def register(runtime: Runtime, base_url: str, keys: list[bytes]) -> None:
    async def on_invoices(batch: Batch[CloudEvent], tx: Tx) -> None:
        """Renders each finalized invoice's PDF once (no inbox: an invoice has one
        document, and one already stored is neither rendered again nor announced)."""
        finalized: dict[tuple[str, str], Message[InvoiceFinalized]] = {}
        for message in batch:
            if isinstance(message.event, InvoiceFinalized):
                ids = (message.event.tenantid, message.event.data.invoice_id)
                finalized.setdefault(ids, cast(Message[InvoiceFinalized], message))
        if not finalized:
            return
        async with runtime.sessions() as session:  # read, then give the connection back
            repo = DocumentRepository(session)
            done = await repo.rendered(finalized)
            tenants = {t for t, _ in finalized}
            names = await repo.tenant_names(tenants)
            brandings = await repo.brandings(tenants)
            # the names of consolidated invoices' sections (docs/hierarchies.md), one query
            customer_names = await HierarchyRepository(session).names(
                (t, c) for (t, _), m in finalized.items() for c in section_customers(m.event.data)
            )
        documents: list[tuple[NewDocument, service.Job, Message[InvoiceFinalized], str]] = []
        for key, m in finalized.items():
            if key in done:
                continue
            tenant = m.event.tenantid
            if tenant not in names:
                tx.reject(m, f"unknown tenant {tenant!r}", code="unknown_tenant")
                continue
            row = brandings.get(tenant)
            try:
                branding = service.branding_of(row.spec if row else None, names[tenant])
            except ValidationError as e:
                tx.reject(m, f"the tenant's branding: {describe(e)}", code="bad_branding")
                continue
            job = service.job(m.event, branding)
            url = link_url(base_url, keys, job.link)
            try:
                sections = {e: n for (t, e), n in customer_names.items() if t == tenant}
                pdf = await _render(job, url, sections)
            except Exception as e:  # its data cannot be rendered: this invoice only
                log.error(
                    "invoice not rendered",
                    tenantid=tenant,
                    invoice_id=job.invoice.invoice_id,
                    error=describe(e),
                    exc_info=e,
                )
                tx.reject(m, f"render failed: {describe(e)}", code="render_failed")
                continue
            doc = NewDocument(
                tenant_id=tenant,
                invoice_id=job.invoice.invoice_id,
                customer=job.invoice.customer,
                number=job.invoice.number,
                locale=job.locale,
                hosted_expires_at=job.link.expires_at,
                rendered_at=job.rendered_at,
                content=pdf,
            )
            documents.append((doc, job, m, url))
        new = await tx.repo(DocumentRepository).store([d for d, _, _, _ in documents])
        for doc, job, m, url in documents:
            if doc.key in new:
                event = service.rendered(
                    job, m.event, sha256=doc.sha256, size=len(doc.content), hosted_url=url
                )
                partition = topics.partition_key(doc.tenant_id, doc.customer)
                tx.emit(event, topic=topics.EVENTS_DOCUMENTS, key=partition)

    async def on_command(batch: Batch[ConfigureBranding], tx: Tx) -> None:
        """Branding."""
        for message in await tx.claim(batch):
            async with tx.command(message) as result:
                result.update(await COMMANDS[type(message.event)](message.event, tx))

    runtime.consumer(topics.EVENTS_INVOICING, group=groups.DOCUMENTS_INVOICES, decode=decode_event)(
        on_invoices
    )
    runtime.consumer(
        topics.COMMANDS_DOCUMENTS,
        group=groups.DOCUMENTS_COMMANDS,
        decode=decode_command,
        commands=True,
    )(on_command)
