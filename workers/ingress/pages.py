"""Pages a person sees, server-rendered (Jinja2): an invoice's hosted page and the customer
portal (docs/documents.md). No API key: each is reached by a signed, expiring link
(workers/documents/links.py) whose tenant scopes every read.

Routes (none in the OpenAPI document):

- ``GET /hosted/invoices/{token}``: the invoice, live (status, amount due), its PDF and,
  while it can be paid, a card form (Stripe.js); ``…/pdf`` the stored PDF; ``…/status``
  (JSON) what the page polls after Pay; ``POST …/card-setup`` a SetupIntent's client secret
  for Stripe.js; ``POST …/pay`` publishes ``payments.pay_invoice``.
- ``GET /portal/{token}``: the customer's subscriptions, current-period usage per meter
  (inline SVG bars, and the same numbers in a table), credit balance, entitlements,
  invoices (PDF, a fresh hosted link to pay what is due), and a card form to update the
  payment method (``POST …/card-setup``, ``POST …/payment-method`` publishes
  ``payments.attach_payment_method``; ``GET …/status`` its outcome); ``GET
  /portal/{token}/invoices/{invoice_id}/pdf`` one of *its* invoices' PDF (another
  customer's invoice is 404).

A token that does not verify answers a page saying the link is not valid or has expired —
404 (altered, malformed, of another kind), 410 (expired) — with nothing of any invoice or
customer on it. Every page is sent with ``Content-Security-Policy`` (our own origin and
Stripe.js's; the one inline ``<style>``, the tenant's accent colour, carries a nonce),
``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` (the token is in the URL) and
``Cache-Control: no-store``. POSTs take JSON only (``Content-Type: application/json``,
which a cross-site HTML form cannot send without a CORS preflight we never grant) and must
carry an ``Origin`` equal to the page's own (the request's Host, or
``BILLSTREAM_PUBLIC_URL``): anything else is 403.
"""

from __future__ import annotations

import secrets as pysecrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import jinja2
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import topics
from schemas.documents import Branding
from schemas.locales import Locale
from schemas.payments import (
    PAYMENT_METHOD_PATTERN,
    AttachPaymentMethod,
    PayInvoice,
    PayInvoiceSpec,
    PaymentMethodData,
)
from schemas.topics import partition_key
from storage.commands import CommandRepository
from storage.documents import DocumentRepository
from storage.entitlements import EntitlementRepository
from storage.invoicing import InvoicingRepository
from storage.metering import MeterRepository, UsageRepository
from storage.payments import PaymentsRepository
from workers import documents, entitlements, invoicing, payments
from workers.ingress import page_text
from workers.ingress.deps import IngressState, State, Unit
from workers.ingress.routes import envelope, submit
from workers.runtime.tx import Tx

router = APIRouter(include_in_schema=False)

_HERE = Path(__file__).parent
_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_STATIC: dict[str, tuple[bytes, str]] = {
    "pages.css": ((_HERE / "static" / "pages.css").read_bytes(), "text/css; charset=utf-8"),
    "pages.js": ((_HERE / "static" / "pages.js").read_bytes(), "text/javascript; charset=utf-8"),
}
STRIPE_API = "https://api.stripe.com"
STRIPE_HOOKS = "https://hooks.stripe.com"
PAY_LINK_DAYS = 7  # the hosted link the portal hands out for an invoice due
Token = Annotated[str, PathParam(min_length=1, max_length=4096)]  # links.py bounds it
InvoiceId = Annotated[str, PathParam(min_length=1, max_length=64)]


# --- security: headers, origin ------------------------------------------------------------


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def security_headers(settings_js_url: str, nonce: str) -> dict[str, str]:
    js = _origin(settings_js_url)
    stripe = " ".join(o for o in (js, STRIPE_API) if o)
    frames = " ".join(o for o in (js, STRIPE_HOOKS) if o)
    csp = (
        "default-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
        f"img-src 'self' data:; style-src 'self' 'nonce-{nonce}'; "
        f"script-src 'self' {js}; connect-src 'self' {stripe}; frame-src {frames}"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(
        body,
        status_code=status,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def _refused(status: int, message: str) -> JSONResponse:
    return _json({"message": message}, status)


def same_origin(request: Request, public_base_url: str) -> bool:
    """A page's POST: JSON, from a page of ours (``Origin`` is the request's own, or the
    public URL's)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    origin = request.headers.get("origin")
    if content_type != "application/json" or not origin:
        return False
    own = {f"{request.url.scheme}://{request.headers.get('host', '')}", _origin(public_base_url)}
    return origin in own


# --- rendering ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Accent:
    color: str  # the tenant's
    text: str  # the accent, darkened until it reads on white (4.5:1)
    on: str  # text on an accent background: white or near-black, whichever reads


def _luminance(hex_color: str) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def accent(color: str) -> Accent:
    """The accent and the colours that keep text on and in it at 4.5:1 or more."""
    color = color.upper()
    text = color
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    while _contrast(text, "#FFFFFF") < 4.5:
        r, g, b = (int(v * 0.9) for v in (r, g, b))
        text = f"#{r:02X}{g:02X}{b:02X}"
    on = "#FFFFFF" if _contrast(color, "#FFFFFF") >= 4.5 else "#111111"
    return Accent(color, text, on)


def page(
    st: IngressState,
    template: str,
    context: Mapping[str, Any],
    status: int = 200,
) -> HTMLResponse:
    nonce = pysecrets.token_urlsafe(16)
    brand: Branding = context["brand"]
    html = _env.get_template(template).render(
        {
            **context,
            "nonce": nonce,
            "accent": accent(brand.accent_color),
            "stripe_js_url": st.settings.stripe_js_url,
        }
    )
    return HTMLResponse(
        html, status_code=status, headers=security_headers(st.settings.stripe_js_url, nonce)
    )


_NEUTRAL = Branding(name="billstream", accent_color="#1F4FD1")


def _request_locale(request: Request) -> Locale:
    lang = request.headers.get("accept-language", "").strip().lower()
    return "id" if lang.startswith("id") else "en"


def error_page(
    st: IngressState,
    locale: Locale,
    status: int,
    heading_key: str,
    detail_key: str,
    brand: Branding = _NEUTRAL,
) -> HTMLResponse:
    t = page_text.labels(locale)
    context = {
        "brand": brand,
        "locale": locale,
        "t": t,
        "heading": t[heading_key],
        "detail": t[detail_key],
        "return_url": None,
    }
    return page(st, "error.html", context, status)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    found = _STATIC.get(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    body, media = found
    return Response(
        body,
        media_type=media,
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


# --- links -----------------------------------------------------------------------------------

_keys_cache: dict[str, list[bytes]] = {}


def link_keys(st: IngressState) -> list[bytes] | None:
    """The MAC keys of the links (derived once per secrets key); None without one."""
    secret = st.settings.secrets_key
    if secret is None:
        return None
    raw = secret.get_secret_value()
    keys = _keys_cache.get(raw)
    if keys is None:
        keys = _keys_cache[raw] = documents.link_keys(raw)
    return keys


def verify(
    st: IngressState, request: Request, token: str, purpose: documents.Purpose
) -> documents.Link | HTMLResponse:
    """The link ``token`` stands for, or the page that refuses it (no data on it)."""
    locale = _request_locale(request)
    keys = link_keys(st)
    if keys is None:
        return error_page(st, locale, 503, "unavailable", "unavailable_detail")
    try:
        return documents.verify(keys, token, purpose, datetime.now(UTC))
    except documents.LinkError as e:
        status = 410 if e.reason == "expired" else 404
        return error_page(st, locale, status, "link_invalid", "link_invalid_detail")


def _locale(*candidates: str | None) -> Locale:
    for c in candidates:
        if c == "en":
            return "en"
        if c == "id":
            return "id"
    return "en"


async def _branding(tx: Tx, tenant_id: str) -> Branding:
    repo = tx.repo(DocumentRepository)
    row = await repo.branding(tenant_id)
    if row is not None:
        return Branding.model_validate(row.spec)
    names = await repo.tenant_names([tenant_id])
    return Branding(name=names.get(tenant_id) or tenant_id)


@dataclass(frozen=True)
class Formats:
    """Amounts, dates and quantities in one locale and currency."""

    locale: Locale
    currency: str

    def money(self, amount: int) -> str:
        return documents.format_money(amount, self.currency, self.locale)

    def date(self, at: datetime) -> str:
        return documents.format_date(at, self.locale)

    def short_date(self, at: datetime) -> str:
        return documents.format_date(at, self.locale, short=True)

    def period(self, start: datetime, end: datetime) -> str:
        return documents.format_period(start, end, self.locale)

    def quantity(self, value: Decimal) -> str:
        return documents.format_quantity(value, self.locale)


def _state(status: str, amount_due: int, due_at: datetime | None, now: datetime) -> str:
    """What an invoice's status means to its customer (as its PDF says it)."""
    if status == "finalized":
        if amount_due <= 0:
            return "paid"
        if due_at is not None and now >= due_at:
            return "overdue"
        return "due"
    return status


def _address(address: Any) -> list[str]:
    if not address:
        return []
    a = address if isinstance(address, Mapping) else address.model_dump()
    city = " ".join(str(a[k]) for k in ("postal_code", "city") if a.get(k))
    lines = [a.get("line1"), a.get("line2"), city, a.get("state"), a.get("country")]
    return [str(x) for x in lines if x]


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
        locale = _locale(link.locale, _request_locale(request))
        return error_page(st, locale, 404, "not_found", "not_found_detail")
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    rows = (await repo.lines([invoice.id]))[invoice.id] if lines else []
    data = invoicing.invoice_data(invoice, customer.external_id, rows)
    brand = await _branding(tx, link.tenant_id)
    buyer_locale = data.buyer.locale if data.buyer is not None else None
    locale = _locale(link.locale, buyer_locale, customer.locale, brand.default_locale)
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


def _percent(value: Any, locale: Locale) -> str:
    return documents.format_percent(Decimal(value), locale)


def _taxes(data: Any, f: Formats, t: Mapping[str, str]) -> list[dict[str, Any]]:
    if not data.tax_breakdown:
        return [{"label": t["tax"], "amount": data.tax}] if data.tax else []
    return [
        {
            "label": (
                tax.display_name
                if "%" in tax.display_name
                else f"{tax.display_name} {_percent(tax.percentage, f.locale)}"
            )
            + (f" ({t['inclusive']})" if tax.inclusive else ""),
            "amount": tax.tax,
        }
        for tax in data.tax_breakdown
    ]


@router.get("/hosted/invoices/{token}", response_class=HTMLResponse)
async def hosted_invoice(token: Token, request: Request, st: State, tx: Unit) -> Response:
    h = await _hosted(st, request, tx, token)
    if isinstance(h, HTMLResponse):
        return h
    data, now = h.data, datetime.now(UTC)
    t = page_text.labels(h.locale)
    f = Formats(h.locale, data.currency)
    state = _state(data.status, data.amount_due, data.due_at, now)
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
        "lines": _line_rows(data, f, t),
        "taxes": _taxes(data, f, t),
        "pdf_url": f"/hosted/invoices/{token}/pdf" if document is not None else None,
        "form": form,
        "seller_address": _address(h.brand.address),
        "buyer_name": (buyer.name if buyer is not None and buyer.name else None)
        or h.customer.name
        or h.customer.external_id,
        "buyer_address": _address(
            buyer.billing_address if buyer is not None else h.customer.billing_address
        ),
        "buyer_tax_ids": [
            str(x.get("value") if isinstance(x, Mapping) else getattr(x, "value", x))
            for x in ((buyer.tax_ids if buyer is not None else h.customer.tax_ids) or [])
        ],
        "return_url": None,
    }
    return page(st, "hosted_invoice.html", context)


def _pdf(content: bytes, number: str | None, invoice_id: str) -> Response:
    name = f"{number or invoice_id}.pdf".replace('"', "")
    return Response(
        content,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/hosted/invoices/{token}/pdf")
async def hosted_pdf(token: Token, request: Request, st: State, tx: Unit) -> Response:
    h = await _hosted(st, request, tx, token, lines=False)
    if isinstance(h, HTMLResponse):
        return h
    found = await tx.repo(DocumentRepository).invoice_pdf(h.link.tenant_id, h.data.invoice_id)
    if found is None:
        return error_page(st, h.locale, 404, "pdf_pending", "pdf_pending_detail", h.brand)
    return _pdf(found[1], h.data.number, h.data.invoice_id)


async def _command(tx: Tx, tenant_id: str, command_id: str | None, kind: str) -> dict[str, Any]:
    """A page's command's outcome (only commands of ``kind``): status and, if it failed,
    the reason a customer may read."""
    if not command_id or len(command_id) > 64:
        return {}
    row = await tx.repo(CommandRepository).get(tenant_id, command_id)
    if row is None or row.type != kind:
        return {}
    message = (row.error or {}).get("message") if row.status == "failed" else None
    return {"command": {"status": row.status, "message": message}}


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
        return _refused(h.status_code, "This link is not valid or has expired")
    data, t = h.data, page_text.labels(h.locale)
    state = _state(data.status, data.amount_due, data.due_at, datetime.now(UTC))
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
        **await _command(tx, h.link.tenant_id, command, PayInvoice.model_fields["type"].default),
    }
    return _json(body)


class _PaymentMethodIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payment_method: str = Field(pattern=PAYMENT_METHOD_PATTERN)


async def _payment_method(request: Request) -> str | None:
    try:
        return _PaymentMethodIn.model_validate_json(await request.body()).payment_method
    except ValidationError:
        return None


async def _card_setup(st: IngressState, tx: Tx, tenant_id: str, customer: str) -> JSONResponse:
    account = await tx.repo(PaymentsRepository).account(tenant_id)
    if account is None or not account.publishable_key:
        return _refused(409, "Card payments are not available")
    mapping = await tx.repo(PaymentsRepository).customer(tenant_id, customer)
    try:
        secret = await payments.card_setup(st.settings, account, tenant_id, customer, mapping)
    except payments.StripeRejected as e:
        return _refused(402, str(e))
    except (payments.StripeUnavailable, payments.SecretsKeyMissing):
        return _refused(503, "Card payments are unavailable right now; try again shortly")
    return _json({"client_secret": secret})


@router.post("/hosted/invoices/{token}/card-setup")
async def hosted_card_setup(token: Token, request: Request, st: State, tx: Unit) -> Response:
    if not same_origin(request, st.settings.public_base_url):
        return _refused(403, "Send JSON from the invoice's page")
    h = await _hosted(st, request, tx, token, lines=False)
    if isinstance(h, HTMLResponse):
        return _refused(h.status_code, "This link is not valid or has expired")
    if not _payable(h.data):
        return _refused(409, "This invoice is not open for payment")
    return await _card_setup(st, tx, h.link.tenant_id, h.customer.external_id)


@router.post("/hosted/invoices/{token}/pay")
async def hosted_pay(token: Token, request: Request, st: State, tx: Unit) -> Response:
    """Publishes ``payments.pay_invoice`` for the amount due now; 202 with the command id
    and the number of card attempts so far (the page waits for a later one)."""
    if not same_origin(request, st.settings.public_base_url):
        return _refused(403, "Send JSON from the invoice's page")
    payment_method = await _payment_method(request)
    if payment_method is None:
        return _refused(422, "payment_method: a Stripe PaymentMethod id (pm_…)")
    h = await _hosted(st, request, tx, token, lines=False)
    if isinstance(h, HTMLResponse):
        return _refused(h.status_code, "This link is not valid or has expired")
    data, tenant_id = h.data, h.link.tenant_id
    if not _payable(data):
        return _refused(409, "This invoice is not open for payment")
    account = await tx.repo(PaymentsRepository).account(tenant_id)
    if account is None or not account.publishable_key:
        return _refused(409, "Card payments are not available")
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


# --- the portal -----------------------------------------------------------------------------


def _return_url(url: str | None) -> str | None:
    """The session's "back" link (signed into its token; http or https only)."""
    return url if url and urlsplit(url).scheme in ("http", "https") else None


@dataclass(frozen=True)
class _Portal:
    link: documents.Link
    customer: Any  # storage.invoicing.Customer
    brand: Branding
    locale: Locale


async def _portal(st: IngressState, request: Request, tx: Tx, token: str) -> _Portal | HTMLResponse:
    link = verify(st, request, token, "portal")
    if isinstance(link, HTMLResponse):
        return link
    customer = await tx.repo(InvoicingRepository).customer(link.tenant_id, link.subject)
    if customer is None:
        locale = _locale(link.locale, _request_locale(request))
        return error_page(st, locale, 404, "not_found", "not_found_detail")
    brand = await _branding(tx, link.tenant_id)
    return _Portal(
        link, customer, brand, _locale(link.locale, customer.locale, brand.default_locale)
    )


CHART_W, CHART_H, CHART_PAD = 600, 110, 4


def _chart(
    name: str,
    days: Sequence[tuple[datetime, Decimal]],
    fmt: Callable[[Decimal], str],
    day_label: Callable[[datetime], str],
) -> dict[str, Any]:
    """Daily bars as inline SVG (no script); its label says the same numbers in words."""
    top = max((v for _, v in days), default=Decimal(0))
    n = max(len(days), 1)
    slot = CHART_W / n
    width = max(slot * 0.7, 1.0)
    base = CHART_H - CHART_PAD
    bars = []
    for i, (day, value) in enumerate(days):
        h = float(value / top) * (base - CHART_PAD) if top > 0 else 0.0
        if value > 0:
            h = max(h, 1.5)
        bars.append(
            {
                "x": f"{i * slot + (slot - width) / 2:.2f}",
                "y": f"{base - h:.2f}",
                "w": f"{width:.2f}",
                "h": f"{h:.2f}",
                "title": f"{day_label(day)}: {fmt(value)}",
            }
        )
    busiest = max(days, key=lambda d: d[1]) if days and top > 0 else None
    label = f"{name}: " + (
        f"{len(days)} days; highest {fmt(busiest[1])} on {day_label(busiest[0])}"
        if busiest
        else "no usage"
    )
    return {"width": CHART_W, "height": CHART_H, "base": base, "bars": bars, "label": label}


def _metered_keys(spec: Mapping[str, Any]) -> list[str]:
    keys: list[str] = []
    for price in spec.get("prices", []):
        meter = price.get("meter") if isinstance(price, Mapping) else None
        if isinstance(meter, str) and meter not in keys:
            keys.append(meter)
    return keys


async def _usage(
    tx: Tx,
    tenant_id: str,
    subject: str,
    subs: Sequence[Any],
    plans: Mapping[str, Any],
    f: Formats,
    now: datetime,
) -> list[dict[str, Any]]:
    meters = tx.repo(MeterRepository)
    usage = tx.repo(UsageRepository)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for sub in subs:
        start, end = sub.current_period_start, sub.current_period_end
        for key in _metered_keys(plans[sub.plan_id].spec):
            if key in seen:
                continue
            seen.add(key)
            meter = await meters.get(tenant_id, key)
            if meter is None:
                continue
            total_rows = await usage.query(
                meter, start=start, end=end, subjects=[subject], window="none", group_by=[]
            )
            daily = await usage.query(
                meter, start=start, end=end, subjects=[subject], window="day", group_by=[]
            )
            by_day = {
                r.window_start.date(): Decimal(r.value)
                for r in daily
                if r.window_start is not None and r.value is not None
            }
            # every day of the period (those to come are empty): the bars keep their width
            days: list[tuple[datetime, Decimal]] = []
            day = start
            while day < end and len(days) < 92:
                days.append((day, by_day.get(day.date(), Decimal(0))))
                day += timedelta(days=1)
            total = next((Decimal(r.value) for r in total_rows if r.value is not None), Decimal(0))
            name = meter.name or meter.key
            out.append(
                {
                    "key": meter.key,
                    "name": name,
                    "total": f.quantity(total),
                    "chart": _chart(name, days, f.quantity, f.short_date),
                    "first_day": f.short_date(start),
                    "last_day": f.short_date(end - timedelta(seconds=1)),
                    "days": [
                        {"day": f.short_date(d), "value": f.quantity(v)}
                        for d, v in days
                        if d <= now
                    ],
                }
            )
    return out


async def _entitlements(
    tx: Tx, tenant_id: str, customer: str, t: Mapping[str, str], f: Formats, now: datetime
) -> list[dict[str, Any]]:
    snap = await tx.repo(EntitlementRepository).snapshot(tenant_id, customer, now)
    if not snap.customer_known or not snap.features:
        return []
    answer = entitlements.evaluate(snap, now)
    out = []
    for e in answer.entitlements:
        detail = ""
        if e.usage is not None:
            used = f.quantity(Decimal(e.usage))
            detail = f"{used} / {f.quantity(Decimal(e.limit))}" if e.limit is not None else used
        out.append(
            {
                "name": e.name,
                "has_access": e.has_access,
                "access": t["access_yes"] if e.has_access else t["access_no"],
                "detail": detail,
            }
        )
    return out


@router.get("/portal/{token}", response_class=HTMLResponse)
async def portal(token: Token, request: Request, st: State, tx: Unit) -> Response:
    p = await _portal(st, request, tx, token)
    if isinstance(p, HTMLResponse):
        return p
    tenant_id, customer, now = p.link.tenant_id, p.customer, datetime.now(UTC)
    t = page_text.labels(p.locale)
    f = Formats(p.locale, customer.currency)
    repo = tx.repo(InvoicingRepository)
    subs = await repo.list_subscriptions(tenant_id, customer.id, 20)
    plans = await repo.plans({s.plan_id for s in subs})
    live = [s for s in subs if s.status != "ended"]
    subscriptions = [
        {
            "plan": (plans[s.plan_id].spec.get("name") or plans[s.plan_id].key),
            "status": "active" if s.status != "ended" else "ended",
            "status_label": t["sub_active"] if s.status != "ended" else t["sub_ended"],
            "period": f.period(s.current_period_start, s.current_period_end),
            "note": t["cancels_at_end"] if s.cancel_at_period_end else "",
        }
        for s in (live or subs[:1])
    ]
    meters = await _usage(tx, tenant_id, customer.external_id, live, plans, f, now)
    (credit,) = await invoicing.credit_balances(tx, [customer], now)
    credits = (
        {
            "balance": f.money(credit.balance),
            "pending": f.money(credit.pending) if credit.pending else "",
            "projected": f.money(credit.projected),
        }
        if credit.grants
        else None
    )
    ents = await _entitlements(tx, tenant_id, customer.external_id, t, f, now)
    rows = [
        i
        for i in await repo.list_invoices(
            tenant_id, customer_id=customer.id, subscription_id=None, status=None, limit=100
        )
        if i.status != "draft"
    ]
    rendered = await tx.repo(DocumentRepository).rendered((tenant_id, i.id) for i in rows)
    keys = link_keys(st) or []
    invoices = []
    for i in rows:
        due = max(i.total - i.amount_paid - i.amount_credited, 0)
        state = _state(i.status, due, i.due_at, now)
        fi = Formats(p.locale, i.currency)
        pay_url = None
        if i.status == "finalized" and due > 0 and keys:
            link = documents.Link(
                "invoice", tenant_id, i.id, now + timedelta(days=PAY_LINK_DAYS), p.locale
            )
            pay_url = documents.PATHS["invoice"] + documents.sign(keys, link)
        invoices.append(
            {
                "id": i.id,
                "number": i.number or i.id[:8],
                "date": f.date(i.finalized_at or i.created_at),
                "total": fi.money(i.total),
                "amount_due": fi.money(due),
                "state": state,
                "state_label": t["state_" + state],
                "pdf_url": f"/portal/{token}/invoices/{i.id}/pdf"
                if (tenant_id, i.id) in rendered
                else None,
                "pay_url": pay_url,
            }
        )
    account = await tx.repo(PaymentsRepository).account(tenant_id)
    mapping = await tx.repo(PaymentsRepository).customer(tenant_id, customer.external_id)
    form = None
    if account is not None and account.publishable_key:
        base = f"/portal/{token}"
        form = {
            "kind": "save",
            "publishable_key": account.publishable_key,
            "setup_url": f"{base}/card-setup",
            "submit_url": f"{base}/payment-method",
            "status_url": f"{base}/status",
            "button": t["save_card"],
        }
    context = {
        "brand": p.brand,
        "locale": p.locale,
        "t": t,
        "customer_name": customer.name or customer.external_id,
        "subscriptions": subscriptions,
        "meters": meters,
        "credits": credits,
        "entitlements": ents,
        "invoices": invoices,
        "form": form,
        "has_card": mapping is not None and mapping.payment_method_id is not None,
        "return_url": _return_url(p.link.return_url),
    }
    return page(st, "portal.html", context)


@router.get("/portal/{token}/invoices/{invoice_id}/pdf")
async def portal_pdf(
    token: Token, invoice_id: InvoiceId, request: Request, st: State, tx: Unit
) -> Response:
    """One of the session's customer's invoices; any other invoice id is 404."""
    p = await _portal(st, request, tx, token)
    if isinstance(p, HTMLResponse):
        return p
    invoice = await tx.repo(InvoicingRepository).invoice(p.link.tenant_id, invoice_id)
    found = (
        await tx.repo(DocumentRepository).invoice_pdf(p.link.tenant_id, invoice_id)
        if invoice is not None and invoice.customer_id == p.customer.id
        else None
    )
    if found is None:
        return error_page(st, p.locale, 404, "not_found", "not_found_detail", p.brand)
    return _pdf(found[1], invoice.number if invoice else None, invoice_id)


@router.get("/portal/{token}/status")
async def portal_status(
    token: Token,
    request: Request,
    st: State,
    tx: Unit,
    command: str | None = Query(None, max_length=64),
) -> Response:
    p = await _portal(st, request, tx, token)
    if isinstance(p, HTMLResponse):
        return _refused(p.status_code, "This link is not valid or has expired")
    kind = AttachPaymentMethod.model_fields["type"].default
    return _json(await _command(tx, p.link.tenant_id, command, kind))


@router.post("/portal/{token}/card-setup")
async def portal_card_setup(token: Token, request: Request, st: State, tx: Unit) -> Response:
    if not same_origin(request, st.settings.public_base_url):
        return _refused(403, "Send JSON from the portal's page")
    p = await _portal(st, request, tx, token)
    if isinstance(p, HTMLResponse):
        return _refused(p.status_code, "This link is not valid or has expired")
    return await _card_setup(st, tx, p.link.tenant_id, p.customer.external_id)


@router.post("/portal/{token}/payment-method")
async def portal_payment_method(token: Token, request: Request, st: State, tx: Unit) -> Response:
    """Publishes ``payments.attach_payment_method`` (the customer created in Stripe first if
    it is not there yet); 202 with the command id."""
    if not same_origin(request, st.settings.public_base_url):
        return _refused(403, "Send JSON from the portal's page")
    payment_method = await _payment_method(request)
    if payment_method is None:
        return _refused(422, "payment_method: a Stripe PaymentMethod id (pm_…)")
    p = await _portal(st, request, tx, token)
    if isinstance(p, HTMLResponse):
        return _refused(p.status_code, "This link is not valid or has expired")
    tenant_id, customer = p.link.tenant_id, p.customer.external_id
    data = PaymentMethodData(customer=customer, payment_method=payment_method, create_customer=True)
    command = AttachPaymentMethod(data=data, **envelope(request, tenant_id, customer))
    return await submit(
        request,
        st,
        tenant_id,
        command,
        topic=topics.COMMANDS_PAYMENTS,
        key=partition_key(tenant_id, customer),
    )
