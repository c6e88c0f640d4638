"""Pages a person sees, server-rendered (Jinja2): an invoice's hosted page and the customer
portal (docs/documents.md). No API key: each is reached by a signed, expiring link
(workers/documents/links.py) whose tenant scopes every read.

This module holds what both share (links, branding, formats, security headers, templates,
the card form's SetupIntent, ``/static/…``); the routes are in hosted.py and portal.py (none
in the OpenAPI document):

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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import jinja2
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.documents import Branding
from schemas.locales import Locale
from schemas.payments import (
    PAYMENT_METHOD_PATTERN,
)
from storage.commands import CommandRepository
from storage.documents import DocumentRepository
from storage.payments import PaymentsRepository
from workers import documents, payments
from workers.ingress import page_text
from workers.ingress.deps import IngressState
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


def json_response(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(
        body,
        status_code=status,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def refused(status: int, message: str) -> JSONResponse:
    return json_response({"message": message}, status)


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


def request_locale(request: Request) -> Locale:
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
    locale = request_locale(request)
    keys = link_keys(st)
    if keys is None:
        return error_page(st, locale, 503, "unavailable", "unavailable_detail")
    try:
        return documents.verify(keys, token, purpose, datetime.now(UTC))
    except documents.LinkError as e:
        status = 410 if e.reason == "expired" else 404
        return error_page(st, locale, status, "link_invalid", "link_invalid_detail")


def pick_locale(*candidates: str | None) -> Locale:
    for c in candidates:
        if c == "en":
            return "en"
        if c == "id":
            return "id"
    return "en"


async def tenant_branding(tx: Tx, tenant_id: str) -> Branding:
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


def invoice_state(status: str, amount_due: int, due_at: datetime | None, now: datetime) -> str:
    """What an invoice's status means to its customer (as its PDF says it)."""
    if status == "finalized":
        if amount_due <= 0:
            return "paid"
        if due_at is not None and now >= due_at:
            return "overdue"
        return "due"
    return status


def address_lines(address: Any) -> list[str]:
    if not address:
        return []
    a = address if isinstance(address, Mapping) else address.model_dump()
    city = " ".join(str(a[k]) for k in ("postal_code", "city") if a.get(k))
    lines = [a.get("line1"), a.get("line2"), city, a.get("state"), a.get("country")]
    return [str(x) for x in lines if x]


def pdf_response(content: bytes, number: str | None, invoice_id: str) -> Response:
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


async def command_outcome(
    tx: Tx, tenant_id: str, command_id: str | None, kind: str, subject: str
) -> dict[str, Any]:
    """A page's command's outcome (only commands of ``kind`` sent for ``subject``: the
    page's invoice or customer, so one link never reads another's): status and, if it
    failed, the reason a customer may read."""
    if not command_id or len(command_id) > 64:
        return {}
    row = await tx.repo(CommandRepository).get(tenant_id, command_id)
    if row is None or row.type != kind or row.subject != subject:
        return {}
    message = (row.error or {}).get("message") if row.status == "failed" else None
    return {"command": {"status": row.status, "message": message}}


class _PaymentMethodIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payment_method: str = Field(pattern=PAYMENT_METHOD_PATTERN)


async def payment_method_of(request: Request) -> str | None:
    try:
        return _PaymentMethodIn.model_validate_json(await request.body()).payment_method
    except ValidationError:
        return None


async def card_setup_response(
    st: IngressState, tx: Tx, tenant_id: str, customer: str
) -> JSONResponse:
    account = await tx.repo(PaymentsRepository).account(tenant_id)
    if account is None or not account.publishable_key:
        return refused(409, "Card payments are not available")
    mapping = await tx.repo(PaymentsRepository).customer(tenant_id, customer)
    try:
        secret = await payments.card_setup(st.settings, account, tenant_id, customer, mapping)
    except payments.StripeRejected as e:
        return refused(402, str(e))
    except (payments.StripeUnavailable, payments.SecretsKeyMissing):
        return refused(503, "Card payments are unavailable right now; try again shortly")
    return json_response({"client_secret": secret})
