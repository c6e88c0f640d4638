"""An invoice's PDF: ``render_invoice_pdf`` (docs/documents.md, ADR 0054).

A pure function of its inputs: the same invoice, branding, locale, link and time give the
same bytes (the PDF's date is ``rendered_at``; no clock, no randomness, only the fonts built
into the ``typst`` wheel, never the machine's). Every number and word is formatted here, in
Python (``money``, ``i18n``); the Typst template (``templates/invoice.typ``) only lays out
strings. They reach it as one JSON document in ``sys.inputs`` that the template reads with
``json(bytes(…))``: text from users (names, descriptions, the memo) is data, never markup, so
``#panic()`` or ``*bold*`` print as they are.

The compile is synchronous and CPU-bound (tens of milliseconds): callers on an event loop run
it in a thread (``asyncio.to_thread``). Each thread keeps its own compiler, so the fonts are
loaded once per thread and unchanged inputs (the template, a logo) are not parsed again.
"""

from __future__ import annotations

import functools
import io
import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from typing import Any

import segno
import typst

from schemas.documents import Branding, logo_bytes
from schemas.invoicing import Address, InvoiceData, InvoiceLine, TierLine
from schemas.locales import Locale
from schemas.taxes import Buyer, TaxAmount
from workers.documents.i18n import LABELS, label, payment_state
from workers.documents.money import (
    format_date,
    format_money,
    format_percent,
    format_period,
    format_price,
    format_quantity,
)
from workers.documents.sections import sections

_TAX_ID_NAMES = {"id_npwp": "NPWP", "eu_vat": "VAT", "gb_vat": "VAT"}
_TAG_KINDS = {"discount": "kind_discount", "credit": "kind_credit"}
_URL_LINE = 88  # characters of the hosted link per printed line (monospace, 7 pt)
_LOGO_FORMATS = {"image/png": "png", "image/jpeg": "jpg"}


class RenderError(RuntimeError):
    """The template failed to compile these inputs (a bug: every input is data)."""


@functools.cache
def _template() -> bytes:
    return resources.files("workers.documents").joinpath("templates/invoice.typ").read_bytes()


_local = threading.local()


def _compiler() -> typst.Compiler:
    compiler: typst.Compiler | None = getattr(_local, "compiler", None)
    if compiler is None:
        # the wheel's own fonts only: the same bytes on every machine
        compiler = typst.Compiler(ignore_system_fonts=True)
        _local.compiler = compiler
    return compiler


@functools.lru_cache(maxsize=16)
def _logo(data_url: str) -> tuple[str, str]:
    """The logo's format and its bytes as a JSON array (Typst reads bytes from an array)."""
    media, raw = logo_bytes(data_url)
    return _LOGO_FORMATS[media], json.dumps(list(raw), separators=(",", ":"))


@functools.lru_cache(maxsize=256)
def qr_svg(url: str) -> str:
    """The QR code of ``url`` as an SVG document (no quiet zone: the layout leaves room).
    Error correction M; a fixed mask pattern (any mask reads the same; choosing the best of
    the eight costs ~20 ms per code)."""
    out = io.BytesIO()
    segno.make(url, error="m", mask=0).save(
        out, kind="svg", xmldecl=False, svgns=True, border=0, dark="#111111", omitsize=True
    )
    return out.getvalue().decode()


def _address_lines(address: Address | dict[str, Any] | None) -> list[str]:
    if address is None:
        return []
    a = address.model_dump() if isinstance(address, Address) else address
    city = " ".join(str(p) for p in (a.get("postal_code"), a.get("city")) if p)
    region = ", ".join(str(p) for p in (city, a.get("state"), a.get("country")) if p)
    lines = [a.get("line1"), a.get("line2"), region]
    return [str(x) for x in lines if x]


def _url_lines(url: str) -> list[str]:
    return [url[i : i + _URL_LINE] for i in range(0, len(url), _URL_LINE)] or [""]


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _tier(t: TierLine, currency: str, locale: Locale) -> dict[str, str]:
    name = label("tier", locale).format(tier=t.tier)
    if t.flat_fee:
        fee = label("flat_fee", locale).format(amount=format_price(t.flat_fee, currency, locale))
        name = f"{name} · {fee}"
    return {
        "name": name,
        "quantity": format_quantity(t.quantity, locale),
        "unit_price": format_price(t.unit_price, currency, locale),
        "amount": format_price(t.amount, currency, locale),
    }


def _tax_word(t: TaxAmount, locale: Locale) -> str:
    """A rate's name as printed: a tax rate's own (the tenant's words), or for a bare
    ``tax_rate`` (a customer's or a line's, which invoicing names "Tax 11 %" in English) the
    locale's word for tax (its percentage is printed beside it)."""
    if t.tax_rate_id is None and t.name == "tax":
        return label("tax", locale)
    return t.display_name or t.name


def _line_taxes(line: InvoiceLine, locale: Locale) -> str:
    parts = []
    for t in line.taxes:
        word = _tax_word(t, locale)
        if t.taxability == "exempt":
            parts.append(f"{word} {label('exempt', locale).lower()}")
        elif t.taxability == "reverse_charge":
            parts.append(f"{word} {label('reverse_charge', locale).lower()}")
        else:
            incl = f" {label('inclusive', locale)}" if t.inclusive else ""
            parts.append(f"{word} {format_percent(t.percentage, locale)}{incl}")
    return " · ".join(parts)


def _line(line: InvoiceLine, position: int, invoice: InvoiceData, locale: Locale) -> dict[str, Any]:
    currency = invoice.currency
    tag = _TAG_KINDS.get(line.kind)
    if tag is None and line.grant_id is not None:
        tag = "kind_credit"
    if tag is None and line.adjustment_for is not None:
        tag = "kind_adjustment"
    notes = []
    if (line.period_start, line.period_end) != (invoice.period_start, invoice.period_end):
        notes.append(format_period(line.period_start, line.period_end, locale, short=True))
    if line.kind == "discount" and line.applies_to is not None:
        notes.append(label("applies_to", locale).format(line=line.applies_to + 1))
    if line.proration not in (Decimal(0), Decimal(1)) and line.grant_id is None:
        share = format_percent((line.proration * 100).normalize(), locale)
        notes.append(label("proration", locale).format(share=share))
    if line.minimum_applied:
        notes.append(label("minimum_applied", locale))
    taxes = _line_taxes(line, locale)
    if taxes:
        notes.append(taxes)
    charge = tag is None
    return {
        "position": str(position),
        "tag": label(tag, locale) if tag else "",
        "description": line.description,
        "notes": " · ".join(notes),
        "quantity": format_quantity(line.quantity, locale) if charge else "",
        "unit_price": (
            format_price(line.unit_price, currency, locale)
            if charge and line.unit_price is not None and not line.tiers
            else ""
        ),
        "amount": format_money(line.amount, currency, locale),
        "tiers": [_tier(t, currency, locale) for t in line.tiers],
    }


def _tax_row(t: TaxAmount, currency: str, locale: Locale) -> dict[str, str]:
    if t.taxability == "exempt":
        rate = label("exempt", locale)
    elif t.taxability == "reverse_charge":
        rate = label("reverse_charge", locale)
    else:
        rate = format_percent(t.percentage, locale)
        if t.inclusive:
            rate = f"{rate} ({label('inclusive', locale)})"
    return {
        "name": _tax_word(t, locale),
        "rate": rate,
        "taxable": format_money(t.taxable_amount, currency, locale),
        "base": format_money(t.taxable_base, currency, locale),
        "tax": format_money(t.tax, currency, locale),
    }


def _buyer(invoice: InvoiceData, locale: Locale) -> dict[str, Any]:
    buyer: Buyer | None = invoice.buyer
    if buyer is None:
        return {
            "name": invoice.customer,
            "lines": [],
            "tax_ids": [],
            "email": "",
        }
    tax_ids = [
        f"{_TAX_ID_NAMES.get(t.type, label('tax_id', locale))}: {t.value}" for t in buyer.tax_ids
    ]
    return {
        "name": buyer.name,
        "lines": _address_lines(buyer.billing_address),
        "tax_ids": tax_ids,
        "email": buyer.email or "",
    }


def _totals(invoice: InvoiceData, locale: Locale) -> list[dict[str, Any]]:
    cur = invoice.currency

    def row(key: str, amount: int, style: str = "") -> dict[str, Any]:
        return {
            "label": label(key, locale),
            "value": format_money(amount, cur, locale),
            "style": style,
        }

    rows = [row("subtotal", invoice.subtotal)]
    if invoice.discount:
        rows.append(row("discount", -invoice.discount))
    if invoice.credits:
        rows.append(row("credits", -invoice.credits))
    exclusive = invoice.tax - invoice.tax_inclusive
    if exclusive or (not invoice.tax_inclusive and invoice.tax_breakdown):
        rows.append(row("tax", exclusive))
    rows.append(row("total", invoice.total, "total"))
    if invoice.tax_inclusive:
        rows.append(row("tax_included", invoice.tax_inclusive, "note"))
    if invoice.amount_paid:
        rows.append(row("amount_paid", -invoice.amount_paid))
    if invoice.amount_credited:
        rows.append(row("amount_credited", -invoice.amount_credited))
    if invoice.amount_refunded:
        rows.append(row("amount_refunded", invoice.amount_refunded, "note"))
    rows.append(row("amount_due", invoice.amount_due, "due"))
    return rows


def _groups(invoice: InvoiceData, locale: Locale, names: Mapping[str, str]) -> list[dict[str, Any]]:
    """The lines as printed: one group with no title, or for a consolidated invoice
    (docs/hierarchies.md) a group per section — "name · external id" and its subtotal over
    its lines — then the lines of the invoice as a whole (credits), untitled. Each line keeps
    its position, which discount lines name."""
    lines = [_line(ln, i + 1, invoice, locale) for i, ln in enumerate(invoice.lines)]
    parts = sections(invoice, names)
    if not parts:
        return [{"title": "", "subtotal": "", "lines": lines}]
    groups = [
        {
            "title": s.name if s.name == s.customer else f"{s.name} · {s.customer}",
            "subtotal": f"{label('subtotal', locale)} "
            f"{format_money(s.subtotal, invoice.currency, locale)}",
            "lines": [lines[i] for i in s.lines],
        }
        for s in parts
    ]
    placed = {i for s in parts for i in s.lines}
    rest = [ln for i, ln in enumerate(lines) if i not in placed]
    if rest:
        groups.append({"title": "", "subtotal": "", "lines": rest})
    return groups


def invoice_view(
    invoice: InvoiceData,
    branding: Branding,
    *,
    locale: Locale,
    hosted_url: str,
    rendered_at: datetime,
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Everything the template prints, formatted: strings, lists and flags only (no logo).
    ``names``: the names of the customers of a consolidated invoice's sections, by external
    id (the payer's defaults to the buyer's)."""
    payer = invoice.buyer.name if invoice.buyer is not None else invoice.customer
    names = {invoice.customer: payer, **(names or {})}
    cur = invoice.currency
    issued = _utc(rendered_at)
    state = payment_state(invoice, issued)
    meta = [
        [label("invoice_number", locale), invoice.number or invoice.invoice_id],
        [label("issue_date", locale), format_date(issued, locale)],
    ]
    if invoice.due_at is not None:
        meta.append([label("due_date", locale), format_date(invoice.due_at, locale)])
    meta.append(
        [label("period", locale), format_period(invoice.period_start, invoice.period_end, locale)]
    )
    seller_contact = [x for x in (branding.email, branding.website) if x]
    breakdown = invoice.tax_breakdown
    due_line = ""
    if invoice.due_at is not None and state in ("due", "overdue"):
        due_line = label("due_by", locale).format(date=format_date(invoice.due_at, locale))
    return {
        "lang": locale,
        "accent": branding.accent_color,
        "labels": dict(LABELS[locale]),
        "title": label("invoice", locale),
        "number": invoice.number or invoice.invoice_id,
        "state": state,
        "state_label": label(f"state_{state}", locale),
        "seller": {
            "name": branding.name,
            "lines": _address_lines(branding.address),
            "tax_id": f"{label('tax_id', locale)}: {branding.tax_id}" if branding.tax_id else "",
            "contact": " · ".join(seller_contact),
        },
        "meta": meta,
        "buyer": _buyer(invoice, locale),
        "customer_id": f"{label('customer_id', locale)}: {invoice.customer}",
        "groups": _groups(invoice, locale, names),
        "totals": _totals(invoice, locale),
        "amount_due": format_money(invoice.amount_due, cur, locale),
        "due_line": due_line,
        "taxes": [_tax_row(t, cur, locale) for t in breakdown],
        "show_base": any(t.taxable_base != t.taxable_amount for t in breakdown),
        "tax_note": invoice.tax_note or "",
        "memo": invoice.memo or "",
        "hosted_url": hosted_url,
        "hosted_url_lines": _url_lines(hosted_url),
        "qr": qr_svg(hosted_url) if hosted_url else "",
        "footer": branding.footer or "",
        "doc_title": f"{label('invoice', locale)} {invoice.number or invoice.invoice_id}",
        "author": branding.name,
        "currency": cur,
    }


def render_invoice_pdf(
    invoice: InvoiceData,
    branding: Branding,
    *,
    locale: Locale,
    hosted_url: str,
    rendered_at: datetime,
    names: Mapping[str, str] | None = None,
) -> bytes:
    """The invoice as a PDF (A4) in ``locale``, in ``branding``, linking to ``hosted_url`` (as
    text and a QR code), dated ``rendered_at`` (its issue date and the PDF's date); a
    consolidated invoice's lines under a header per customer, named by ``names`` (external
    id → name). Pure: the same inputs give the same bytes. Synchronous and CPU-bound: off the
    event loop, call it through ``asyncio.to_thread``."""
    view = invoice_view(
        invoice,
        branding,
        locale=locale,
        hosted_url=hosted_url,
        rendered_at=rendered_at,
        names=names,
    )
    logo_format, logo = _logo(branding.logo) if branding.logo else ("", "[]")
    view["logo_format"] = logo_format
    inputs = {"data": json.dumps(view, ensure_ascii=False, separators=(",", ":")), "logo": logo}
    try:
        pdf = _compiler().compile(
            input=_template(),
            format="pdf",
            sys_inputs=inputs,
            timestamp=_utc(rendered_at).replace(microsecond=0),
        )
    except typst.TypstError as e:
        raise RenderError(f"invoice {invoice.invoice_id}: {e.message} {e.diagnostic}") from e
    if not isinstance(pdf, bytes):  # a single document: never a list of pages
        raise RenderError(f"invoice {invoice.invoice_id}: no PDF from the compiler")
    return pdf
