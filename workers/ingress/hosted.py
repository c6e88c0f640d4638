"""The hosted invoice page (``/hosted/invoices/{token}``): the invoice, live, its PDF and
paying it by card (docs/documents.md). Shared page machinery: workers/ingress/pages.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from schemas import topics
from schemas.documents import Branding
from schemas.locales import Locale
from schemas.payments import (
    PayInvoice,
    PayInvoiceSpec,
)
from schemas.topics import partition_key
from storage.documents import DocumentRepository
from storage.invoicing import InvoicingRepository
from storage.invoicing.hierarchy import HierarchyRepository
from storage.payments import PaymentsRepository
from workers import documents, invoicing
from workers.ingress import page_text
from workers.ingress.deps import IngressState, State, Unit
from workers.ingress.pages import (
    Formats,
    Token,
    address_lines,
    card_setup_response,
    command_outcome,
    error_page,
    invoice_state,
    json_response,
    page,
    payment_method_of,
    pdf_response,
    pick_locale,
    refused,
    request_locale,
    same_origin,
    tenant_branding,
    verify,
)
from workers.ingress.routes import envelope, submit
from workers.runtime.tx import Tx

router = APIRouter(include_in_schema=False)
PAY_INVOICE = PayInvoice.model_fields["type"].default


# --- the hosted invoice page ---------------------------------------------------------------


@dataclass(frozen=True)
class _Hosted:
    link: documents.Link
    invoice: Any  # storage.invoicing.Invoice
    customer: Any  # storage.invoicing.Customer
    data: Any  # schemas.invoicing.InvoiceData
    brand: Branding
    locale: Locale


async def _hosted(
    st: IngressState, request: Request, tx: Tx, token: str, *, lines: bool = True
) -> _Hosted | HTMLResponse:
    link = verify(st, request, token, "invoice")
    if isinstance(link, HTMLResponse):
        return link
    repo = tx.repo(InvoicingRepository)
    invoice = await repo.invoice(link.tenant_id, link.subject)
    if invoice is None or invoice.status == "draft":
        locale = pick_locale(link.locale, request_locale(request))
        return error_page(st, locale, 404, "not_found", "not_found_detail")
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    rows = (await repo.lines([invoice.id]))[invoice.id] if lines else []
    data = invoicing.invoice_data(invoice, customer.external_id, rows)
    brand = await tenant_branding(tx, link.tenant_id)
    buyer_locale = data.buyer.locale if data.buyer is not None else None
    locale = pick_locale(link.locale, buyer_locale, customer.locale, brand.default_locale)
    return _Hosted(link, invoice, customer, data, brand, locale)


def _payable(data: Any) -> bool:
    return bool(data.status == "finalized" and data.amount_due > 0)


def _line_rows(data: Any, f: Formats, t: Mapping[str, str]) -> list[dict[str, Any]]:
    out = []
    for line in data.lines:
        detail: list[str] = []
        if line.adjustment_for:
            detail.append(t["adjusts"].format(period=line.adjustment_for))
        if len(line.tiers) > 1:
            detail += [
                f"{t['tier'].format(tier=tier.tier)}: {f.quantity(Decimal(tier.quantity))}"
                for tier in line.tiers
            ]
        if line.minimum_applied:
            detail.append(t["minimum_applied"])
        metered = line.meter is not None or line.kind in ("usage", "metered", "package")
        quantity = Decimal(line.quantity)
        out.append(
            {
                "description": line.description,
                "detail": " · ".join(detail),
                "quantity": f.quantity(quantity) if metered or quantity != 1 else "",
                "amount": line.amount,
            }
        )
    return out


async def _groups(
    tx: Tx, tenant_id: str, data: Any, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The lines as shown: one untitled group, or for a consolidated invoice a group per
    customer — its name, external id and subtotal over its lines — then the lines of the
    invoice as a whole (docs/hierarchies.md)."""
    customers = documents.section_customers(data)
    if not customers:
        return [{"title": None, "customer": None, "subtotal": None, "lines": rows}]
    found = await tx.repo(HierarchyRepository).customers(tenant_id, customers)
    parts = documents.sections(data, {e: c.name for e, c in found.items()})
    groups: list[dict[str, Any]] = [
        {
            "title": s.name,
            "customer": s.customer,
            "subtotal": s.subtotal,
            "lines": [rows[i] for i in s.lines],
        }
        for s in parts
    ]
    placed = {i for s in parts for i in s.lines}
    rest = [r for i, r in enumerate(rows) if i not in placed]
    if rest:
        groups.append({"title": None, "customer": None, "subtotal": None, "lines": rest})
    return groups


def _percent(value: Any, locale: Locale) -> str:
    return documents.format_percent(Decimal(value), locale)


def _taxes(data: Any, f: Formats, t: Mapping[str, str]) -> list[dict[str, Any]]:
    if not data.tax_breakdown:
        return [{"label": t["tax"], "amount": data.tax}] if data.tax else []
    rows: list[dict[str, Any]] = []
    for tax in data.tax_breakdown:
        # a bare tax_rate's name is invoicing's English "Tax 11 %": the locale's word instead
        bare = tax.tax_rate_id is None and tax.name == "tax"
        name = t["tax"] if bare else tax.display_name
        label = name if "%" in name else f"{name} {_percent(tax.percentage, f.locale)}"
        inclusive = f" ({t['inclusive']})" if tax.inclusive else ""
        rows.append({"label": label + inclusive, "amount": tax.tax})
    return rows


@router.get("/hosted/invoices/{token}", response_class=HTMLResponse)
async def hosted_invoice(token: Token, request: Request, st: State, tx: Unit) -> Response:
    h = await _hosted(st, request, tx, token)
    if isinstance(h, HTMLResponse):
        return h
    data, now = h.data, datetime.now(UTC)
    t = page_text.labels(h.locale)
    f = Formats(h.locale, data.currency)
    state = invoice_state(data.status, data.amount_due, data.due_at, now)
    document = await tx.repo(DocumentRepository).invoice_document(h.link.tenant_id, data.invoice_id)
    account = await tx.repo(PaymentsRepository).account(h.link.tenant_id)
    form = None
    if _payable(data) and account is not None and account.publishable_key:
        base = f"/hosted/invoices/{token}"
        form = {
            "kind": "pay",
            "publishable_key": account.publishable_key,
            "setup_url": f"{base}/card-setup",
            "submit_url": f"{base}/pay",
            "status_url": f"{base}/status",
            "button": f"{t['pay']} {f.money(data.amount_due)}",
        }
    buyer = data.buyer
    context = {
        "brand": h.brand,
        "locale": h.locale,
        "t": t,
        "inv": data,
        "state": state,
        "state_label": t["state_" + state],
        "issued": h.invoice.finalized_at,
        "money": f.money,
        "date": f.date,
        "period": f.period,
        "groups": await _groups(tx, h.link.tenant_id, data, _line_rows(data, f, t)),
        "taxes": _taxes(data, f, t),
        "pdf_url": f"/hosted/invoices/{token}/pdf" if document is not None else None,
        "form": form,
        "seller_address": address_lines(h.brand.address),
        "buyer_name": (buyer.name if buyer is not None and buyer.name else None)
        or h.customer.name
        or h.customer.external_id,
        "buyer_address": address_lines(
            buyer.billing_address if buyer is not None else h.customer.billing_address
        ),
        "buyer_tax_ids": [
            str(x.get("value") if isinstance(x, Mapping) else getattr(x, "value", x))
            for x in ((buyer.tax_ids if buyer is not None else h.customer.tax_ids) or [])
        ],
        "return_url": None,
    }
    return page(st, "hosted_invoice.html", context)


@router.get("/hosted/invoices/{token}/pdf")
async def hosted_pdf(token: Token, request: Request, st: State, tx: Unit) -> Response:
    h = await _hosted(st, request, tx, token, lines=False)
    if isinstance(h, HTMLResponse):
        return h
    found = await tx.repo(DocumentRepository).invoice_pdf(h.link.tenant_id, h.data.invoice_id)
    if found is None:
        return error_page(st, h.locale, 404, "pdf_pending", "pdf_pending_detail", h.brand)
    return pdf_response(found[1], h.data.number, h.data.invoice_id)


_PAY = PayInvoice.model_fields["type"].default


@router.get("/hosted/invoices/{token}/status")
async def hosted_status(
    token: Token,
    request: Request,
    st: State,
    tx: Unit,
    command: str | None = Query(None, max_length=64),
    after: int = Query(0, ge=0, le=1_000_000),
) -> Response:
    h = await _hosted(st, request, tx, token, lines=False)
    if isinstance(h, HTMLResponse):
        return refused(h.status_code, "This link is not valid or has expired")
    data, t = h.data, page_text.labels(h.locale)
    state = invoice_state(data.status, data.amount_due, data.due_at, datetime.now(UTC))
    f = Formats(h.locale, data.currency)
    rows = await tx.repo(PaymentsRepository).payments_of_invoice(h.link.tenant_id, data.invoice_id)
    attempts = [p for p in rows if p.attempt is not None and p.attempt > after]
    latest = max(attempts, key=lambda p: p.attempt or 0) if attempts else None
    body: dict[str, Any] = {
        "invoice": {
            "status": data.status,
            "state": state,
            "state_label": t["state_" + state],
            "paid": state == "paid",
            "amount_due": data.amount_due,
            "amount_due_text": f.money(data.amount_due),
        },
        "payment": None
        if latest is None
        else {
            "attempt": latest.attempt,
            "state": latest.state,
            "failure_message": latest.failure_message if latest.state == "failed" else None,
        },
        **await command_outcome(tx, h.link.tenant_id, command, _PAY, data.invoice_id),
    }
    return json_response(body)


@router.post("/hosted/invoices/{token}/card-setup")
async def hosted_card_setup(token: Token, request: Request, st: State, tx: Unit) -> Response:
    if not same_origin(request, st.settings.public_base_url):
        return refused(403, "Send JSON from the invoice's page")
    h = await _hosted(st, request, tx, token, lines=False)
    if isinstance(h, HTMLResponse):
        return refused(h.status_code, "This link is not valid or has expired")
    if not _payable(h.data):
        return refused(409, "This invoice is not open for payment")
    return await card_setup_response(st, tx, h.link.tenant_id, h.customer.external_id)


@router.post("/hosted/invoices/{token}/pay")
async def hosted_pay(token: Token, request: Request, st: State, tx: Unit) -> Response:
    """Publishes ``payments.pay_invoice`` for the amount due now; 202 with the command id
    and the number of card attempts so far (the page waits for a later one)."""
    if not same_origin(request, st.settings.public_base_url):
        return refused(403, "Send JSON from the invoice's page")
    payment_method = await payment_method_of(request)
    if payment_method is None:
        return refused(422, "payment_method: a Stripe PaymentMethod id (pm_…)")
    h = await _hosted(st, request, tx, token, lines=False)
    if isinstance(h, HTMLResponse):
        return refused(h.status_code, "This link is not valid or has expired")
    data, tenant_id = h.data, h.link.tenant_id
    if not _payable(data):
        return refused(409, "This invoice is not open for payment")
    account = await tx.repo(PaymentsRepository).account(tenant_id)
    if account is None or not account.publishable_key:
        return refused(409, "Card payments are not available")
    rows = await tx.repo(PaymentsRepository).payments_of_invoice(tenant_id, data.invoice_id)
    attempts = max((p.attempt or 0 for p in rows), default=0)
    customer = h.customer
    spec = PayInvoiceSpec(
        invoice_id=data.invoice_id,
        customer=customer.external_id,
        payment_method=payment_method,
        amount=data.amount_due,
        currency=data.currency,
        email=customer.email,
        name=customer.name,
    )
    command = PayInvoice(data=spec, **envelope(request, tenant_id, data.invoice_id))
    key = partition_key(tenant_id, customer.external_id)
    return await submit(
        request,
        st,
        tenant_id,
        command,
        topic=topics.COMMANDS_PAYMENTS,
        key=key,
        extra={"attempts": attempts},
    )
