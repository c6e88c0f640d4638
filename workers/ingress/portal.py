"""The customer portal (``/portal/{token}``): one customer's subscriptions, usage, credits,
entitlements, invoices and payment method (docs/documents.md). Shared page machinery:
workers/ingress/pages.py."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from schemas import topics
from schemas.documents import Branding
from schemas.locales import Locale
from schemas.payments import (
    AttachPaymentMethod,
    PaymentMethodData,
)
from schemas.topics import partition_key
from storage.documents import DocumentRepository
from storage.entitlements import EntitlementRepository
from storage.invoicing import InvoicingRepository
from storage.metering import MeterRepository, UsageRepository
from storage.payments import PaymentsRepository
from workers import documents, entitlements, invoicing
from workers.ingress import page_text
from workers.ingress.deps import IngressState, State, Unit
from workers.ingress.pages import (
    PAY_LINK_DAYS,
    Formats,
    InvoiceId,
    Token,
    card_setup_response,
    command_outcome,
    error_page,
    invoice_state,
    json_response,
    link_keys,
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
        locale = pick_locale(link.locale, request_locale(request))
        return error_page(st, locale, 404, "not_found", "not_found_detail")
    brand = await tenant_branding(tx, link.tenant_id)
    return _Portal(
        link, customer, brand, pick_locale(link.locale, customer.locale, brand.default_locale)
    )


CHART_W, CHART_H, CHART_PAD = 600, 110, 4


def _chart(
    name: str,
    days: Sequence[tuple[datetime, Decimal]],
    fmt: Callable[[Decimal], str],
    day_label: Callable[[datetime], str],
    t: Mapping[str, str],
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
    label = (
        t["chart_label"].format(
            name=name, days=len(days), value=fmt(busiest[1]), day=day_label(busiest[0])
        )
        if busiest
        else t["chart_empty"].format(name=name)
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
    t: Mapping[str, str],
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
                    "chart": _chart(name, days, f.quantity, f.short_date, t),
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
    meters = await _usage(tx, tenant_id, customer.external_id, live, plans, f, now, t)
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
        state = invoice_state(i.status, due, i.due_at, now)
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
    return pdf_response(found[1], invoice.number if invoice else None, invoice_id)


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
        return refused(p.status_code, "This link is not valid or has expired")
    kind = AttachPaymentMethod.model_fields["type"].default
    outcome = await command_outcome(tx, p.link.tenant_id, command, kind, p.customer.external_id)
    return json_response(outcome)


@router.post("/portal/{token}/card-setup")
async def portal_card_setup(token: Token, request: Request, st: State, tx: Unit) -> Response:
    if not same_origin(request, st.settings.public_base_url):
        return refused(403, "Send JSON from the portal's page")
    p = await _portal(st, request, tx, token)
    if isinstance(p, HTMLResponse):
        return refused(p.status_code, "This link is not valid or has expired")
    return await card_setup_response(st, tx, p.link.tenant_id, p.customer.external_id)


@router.post("/portal/{token}/payment-method")
async def portal_payment_method(token: Token, request: Request, st: State, tx: Unit) -> Response:
    """Publishes ``payments.attach_payment_method`` (the customer created in Stripe first if
    it is not there yet); 202 with the command id."""
    if not same_origin(request, st.settings.public_base_url):
        return refused(403, "Send JSON from the portal's page")
    payment_method = await payment_method_of(request)
    if payment_method is None:
        return refused(422, "payment_method: a Stripe PaymentMethod id (pm_…)")
    p = await _portal(st, request, tx, token)
    if isinstance(p, HTMLResponse):
        return refused(p.status_code, "This link is not valid or has expired")
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
