"""The hosted invoice page and the customer portal over plain HTTP (httpx, no browser),
against the real ingress, broker, PostgreSQL and workers (and localstripe where a card is
paid): an Indonesian customer's page, portal and PDF are in Indonesian with amounts written
as Indonesian invoices write them, and an English portal session of the same customer is
in English; the portal's entitlements are what the check API answers; every page and every
refusal carries the security headers, and a page's POST from elsewhere, without an Origin or
not JSON publishes nothing; a link of one tenant never shows another tenant's customer; a
card that attaches but whose charge is declined leaves the invoice due and says why.

The worked example (by hand, docs/documents.md): IDR (exponent 2), PPN 11 %:
  Paket Bisnis (bulanan)  1 x Rp 1.000.000     = Rp 1.000.000
  Panggilan API      234.500 x Rp 1            = Rp   234.500
  subtotal Rp 1.234.500; PPN 11 % = Rp 135.795; total Rp 1.370.295 = 137029500 minor units.
"""

from __future__ import annotations

import contextlib
import html
import io
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pypdf import PdfReader
from sqlalchemy import func, select

from schemas import topics
from schemas.payments import PayInvoice
from storage.commands import CommandRecord
from tests.conftest import TenantKey, make_tenant
from tests.integration.http import Client
from tests.integration.payments_support import (
    CARD_DECLINED_ON_CHARGE,
    CARD_OK,
    SECRET_KEY,
    WEBHOOK_SECRET,
    card,
    intents,
    localstripe,
    payments_settings,
)
from tests.integration.receipts_support import with_secrets
from tests.integration.support import Sessions, read_all
from tests.integration.test_invoicing import Stack, stack
from workers import documents
from workers.devstack import wait_for
from workers.documents.app import build as build_documents
from workers.entitlements.app import build as build_entitlements
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.payments.app import build as build_payments
from workers.settings import Settings

NBSP = "\u00a0"
PUBLISHABLE_KEY_FOR_TESTS = "pk_test_billstream0123456789"
PAY_INVOICE = PayInvoice.model_fields["type"].default

IDR_LINES = [
    {"description": "Paket Bisnis (bulanan)", "quantity": "1", "unit_price": "1000000"},
    {"description": "Panggilan API", "quantity": "234500", "unit_price": "1"},
]
IDR_SUBTOTAL, IDR_TAX, IDR_TOTAL = 123450000, 13579500, 137029500  # minor units (sen)
# USD: 120.00 + 10 % tax = 132.00 (13200 cents)
DANA = {"external_id": "dana", "name": "Dana Co", "currency": "USD", "tax_rate": "0.1"}
CONSULTING = [{"description": "Consulting", "quantity": "1", "unit_price": "120.00"}]


# --- helpers ------------------------------------------------------------------------------


class _Text(HTMLParser):
    """The text a reader sees (no scripts or styles), whitespace collapsed."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def visible(page: str) -> str:
    parser = _Text()
    parser.feed(page)
    return re.sub(r"[ \t\r\n]+", " ", html.unescape(" ".join(parser.parts)))


def lang(page: str) -> str:
    found = re.search(r'<html lang="([^"]+)"', page)
    assert found, page[:200]
    return found.group(1)


def marked(page: str, attribute: str) -> str:
    """The text of the element carrying ``attribute`` (``data-amount-due`` …)."""
    found = re.search(rf"<[^>]*\b{attribute}\b[^>]*>([^<]*)<", page)
    assert found, attribute
    return html.unescape(found.group(1)).strip()


def pdf_text(content: bytes) -> str:
    words = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(content)).pages)
    return words.replace(NBSP, " ")


def assert_secure(r: httpx.Response) -> None:
    """A page's security headers (docs/documents.md, "Pages: accessible, small, safe")."""
    h = r.headers
    csp = h.get("content-security-policy", "")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, (r.url, csp)
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp, csp
    assert h.get("x-frame-options") == "DENY", r.url
    assert h.get("referrer-policy") == "no-referrer", r.url
    assert h.get("cache-control") == "no-store", r.url
    assert h.get("content-type", "").startswith("text/html"), r.url


def signed(settings: Settings, link: documents.Link) -> str:
    """The path of a link signed as the ingress signs them."""
    assert settings.secrets_key is not None
    keys = documents.link_keys(settings.secrets_key.get_secret_value())
    return documents.PATHS[link.purpose] + documents.sign(keys, link)


def in_hours(hours: float) -> datetime:
    return (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0)


async def one_off(api: Client, customer: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """A one-off invoice, finalized; the API's view of it."""
    result = await api.ok("POST", "/v1/invoices", {"customer": customer, "lines": lines,
                                                   "finalize": True})  # fmt: skip
    assert result["status"] == "finalized", result
    invoice: dict[str, Any] = await api.get(f"/v1/invoices/{result['invoice_id']}")
    return invoice


async def rendered(api: Client, invoice_id: str) -> bytes:
    """The invoice's PDF once the documents worker has stored it."""

    async def ready() -> bytes | None:
        r = await api.http.get(f"/v1/invoices/{invoice_id}/pdf", headers=api.auth)
        assert r.status_code in (200, 503), r.text
        return r.content if r.status_code == 200 else None

    content: bytes = await wait_for(ready, timeout_s=30)
    return content


async def hosted_path(api: Client, invoice_id: str) -> str:
    r = await api.send("POST", f"/v1/invoices/{invoice_id}/hosted-link", {})
    assert r.status_code == 201, r.text
    return urlsplit(r.json()["url"]).path


async def portal_path(api: Client, customer: str, **extra: Any) -> str:
    r = await api.send("POST", "/v1/portal/sessions", {"customer": customer, **extra})
    assert r.status_code == 201, r.text
    return urlsplit(r.json()["url"]).path


async def pay_commands(sessions: Sessions, settings: Settings) -> tuple[int, int]:
    """``payments.pay_invoice`` commands accepted (rows) and published (records)."""
    async with sessions() as db:
        q = select(func.count()).where(CommandRecord.type == PAY_INVOICE)
        accepted = int(await db.scalar(q) or 0)
    records, _ = await read_all(settings, topics.COMMANDS_PAYMENTS)
    published = sum(1 for r in records if f'"type":"{PAY_INVOICE}"'.encode() in (r.value or b""))
    return accepted, published


# --- stacks ---------------------------------------------------------------------------------


def page_settings(settings: Settings) -> Settings:
    return with_secrets(
        settings.model_copy(update={"invoicing_tick_s": 0.2, "entitlements_tick_s": 0.2})
    )


@pytest.fixture
def stripe_base(tmp_path: Path) -> Iterator[str]:
    with localstripe(tmp_path / "localstripe.log") as base:
        yield base


@contextlib.asynccontextmanager
async def paying(settings: Settings, tenant: TenantKey, stripe_base: str) -> AsyncIterator[Stack]:
    """Invoicing, documents and payments against localstripe; the tenant takes cards on its
    pages (a publishable key) and collects nothing by itself (the customer pays)."""
    s = payments_settings(
        settings, stripe_base, stripe_js_url=f"{stripe_base}/js.stripe.com/v3/",
        invoicing_tick_s=0.2,
    )  # fmt: skip
    async with stack(s, tenant, build_invoicing(s), build_documents(s), build_payments(s)) as st:
        await st.api.ok(
            "PUT",
            "/v1/integrations/stripe",
            {
                "secret_key": SECRET_KEY,
                "webhook_secret": WEBHOOK_SECRET,
                "auto_collection": False,
                "publishable_key": PUBLISHABLE_KEY_FOR_TESTS,
            },
        )
        yield st


# --- locales --------------------------------------------------------------------------------


async def test_an_indonesian_customers_page_portal_and_pdf_are_in_indonesian(
    settings: Settings, tenant: TenantKey
) -> None:
    s = page_settings(settings)
    async with stack(s, tenant, build_metering(s), build_invoicing(s), build_documents(s)) as st:
        await st.api.ok("POST", "/v1/customers", {
            "external_id": "sinar", "name": "PT Sinar Digital Indonesia", "currency": "IDR",
            "locale": "id", "tax_rate": "0.11",
        })  # fmt: skip
        inv = await one_off(st.api, "sinar", IDR_LINES)
        assert (inv["subtotal"], inv["tax"], inv["total"], inv["amount_due"]) == (
            IDR_SUBTOTAL, IDR_TAX, IDR_TOTAL, IDR_TOTAL,
        )  # fmt: skip
        pdf = await rendered(st.api, inv["invoice_id"])

        # the hosted page
        r = await st.http.get(await hosted_path(st.api, inv["invoice_id"]))
        assert r.status_code == 200, r.text
        assert_secure(r)
        assert lang(r.text) == "id"
        words = visible(r.text)
        for label in ("Faktur", "Jumlah terutang", "Subtotal", "Ditagihkan kepada",
                      "Unduh PDF", "Belum dibayar"):  # fmt: skip
            assert label in words, label
        assert "Amount due" not in words and "Bill to" not in words
        # a bare tax_rate is "Pajak" (invoicing names it "Tax 11 %", in English)
        assert f"Pajak 11% Rp{NBSP}135.795" in words and "Tax" not in words
        assert marked(r.text, "data-amount-due") == f"Rp{NBSP}1.370.295"
        for amount in ("1.370.295", "1.234.500", "135.795", "1.000.000", "234.500"):
            assert f"Rp{NBSP}{amount}" in words, amount
        assert "1,370,295" not in words and "1.370.295,00" not in words
        assert "PT Sinar Digital Indonesia" in words and inv["number"] in words

        # a metered plan: the portal's usage chart is described in the customer's language
        meter = {"key": "panggilan", "name": "Panggilan API", "event_type": "api.call",
                 "aggregation": "count"}  # fmt: skip
        await st.api.ok("POST", "/v1/meters", meter)
        await st.api.ok("POST", "/v1/plans", {
            "key": "bisnis", "name": "Paket Bisnis", "currency": "IDR", "interval": "month",
            "prices": [{"kind": "per_unit", "key": "calls", "name": "Panggilan API",
                        "meter": "panggilan", "unit_price": "1"}],
        })  # fmt: skip
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        await st.api.ok("POST", "/v1/subscriptions", {"customer": "sinar", "plan": "bisnis",
                                                      "start": hour.isoformat()})  # fmt: skip

        # the portal, in the customer's language
        r = await st.http.get(await portal_path(st.api, "sinar"))
        assert r.status_code == 200, r.text
        assert_secure(r)
        assert lang(r.text) == "id"
        words = visible(r.text)
        for label in ("Faktur", "Jumlah terutang", "Langganan, pemakaian", "Belum dibayar"):
            assert label in words, label
        row = re.search(rf'<tr data-invoice="{inv["invoice_id"]}">(.*?)</tr>', r.text, re.S)
        assert row, r.text
        cells = visible(row.group(1))
        assert inv["number"] in cells and cells.count(f"Rp{NBSP}1.370.295") == 2  # total, due
        assert "Amount due" not in words and "Invoices" not in words
        charts = re.findall(r'<svg[^>]*aria-label="([^"]*)"', r.text)
        assert charts == ["Panggilan API: tidak ada pemakaian"], charts

        # the same customer, a session asked for in English
        r = await st.http.get(await portal_path(st.api, "sinar", locale="en"))
        assert r.status_code == 200, r.text
        assert lang(r.text) == "en"
        words = visible(r.text)
        for label in ("Invoices", "Amount due", "Due"):
            assert label in words, label
        assert "Jumlah terutang" not in words and "Belum dibayar" not in words
        row = re.search(rf'<tr data-invoice="{inv["invoice_id"]}">(.*?)</tr>', r.text, re.S)
        assert row, r.text
        assert visible(row.group(1)).count(f"Rp{NBSP}1,370,295") == 2

        # the PDF: Indonesian words, Indonesian amounts
        text = pdf_text(pdf)
        for label in ("Faktur", "Jumlah terutang", "Ditagihkan kepada", "Subtotal"):
            assert label in text, label
        for amount in ("Rp 1.370.295", "Rp 1.234.500", "Rp 135.795"):
            assert amount in text, (amount, text)
        assert "Amount due" not in text and "Bill to" not in text
        assert "1,370,295" not in text
        assert "Pajak 11%" in text and "Tax" not in text  # the rate's name, in Indonesian


# --- entitlements on the portal -------------------------------------------------------------


async def test_the_portal_lists_entitlements_as_the_check_api_answers_them(
    settings: Settings, tenant: TenantKey
) -> None:
    s = page_settings(settings)
    workers = (build_metering(s), build_invoicing(s), build_entitlements(s))
    async with stack(s, tenant, *workers) as st:
        await st.api.ok("POST", "/v1/meters", {
            "key": "api_calls", "name": "API calls", "event_type": "api.call",
            "aggregation": "sum", "value_property": "$.count",
        })  # fmt: skip
        await st.api.ok("POST", "/v1/plans", {
            "key": "pro", "name": "Pro", "currency": "USD", "interval": "month",
            "prices": [{"kind": "flat", "key": "base", "name": "Pro plan", "amount": "49.00"}],
        })  # fmt: skip
        await st.api.ok("POST", "/v1/customers", {"external_id": "alice", "name": "Alice Ltd",
                                                  "currency": "USD"})  # fmt: skip
        for feature in (
            {"key": "sso", "name": "Single sign-on", "kind": "boolean"},
            {"key": "api", "name": "Public API", "kind": "metered", "meter": "api_calls"},
            {"key": "reports", "name": "Custom reports", "kind": "boolean"},  # not on the plan
        ):
            await st.api.ok("POST", "/v1/features", feature)
        await st.api.ok("PUT", "/v1/plans/pro/entitlements", {"entitlements": [
            {"feature": "sso"}, {"feature": "api", "limit": "10000"},
        ]})  # fmt: skip
        now = datetime.now(UTC).replace(microsecond=0)
        await st.api.ok("POST", "/v1/subscriptions", {
            "customer": "alice", "plan": "pro",
            "start": now.replace(minute=0, second=0).isoformat(),  # a whole hour
        })  # fmt: skip
        events = [
            {"id": f"call-{i}", "source": "tests", "type": "api.call", "subject": "alice",
             "time": now.isoformat(), "data": {"count": n}}
            for i, n in enumerate((250, 1000))
        ]  # fmt: skip
        r = await st.api.send("POST", "/v1/events", {"events": events})
        assert r.status_code == 202, r.text

        async def counted() -> dict[str, Any] | None:
            answer: dict[str, Any] = await st.api.get("/v1/customers/alice/entitlements")
            api = next(e for e in answer["entitlements"] if e["feature"] == "api")
            return answer if api["has_access"] and Decimal(api["usage"]) == 1250 else None

        answer = await wait_for(counted, timeout_s=30)
        check = {e["feature"]: e for e in answer["entitlements"]}
        assert (check["sso"]["has_access"], check["reports"]["has_access"]) == (True, False)
        assert (Decimal(check["api"]["usage"]), Decimal(check["api"]["limit"])) == (1250, 10000)

        r = await st.http.get(await portal_path(st.api, "alice"))
        assert r.status_code == 200, r.text
        section = re.search(r'<section[^>]*aria-labelledby="ent-heading"(.*?)</section>', r.text,
                            re.S)  # fmt: skip
        assert section, "no entitlements on the portal"
        items = [visible(li) for li in re.findall(r"<li>(.*?)</li>", section.group(1), re.S)]
        # one item per feature of the tenant, with the access the check answers, the metered
        # one with its usage and limit (formatted by hand: 1,250 of 10,000)
        assert sorted(items) == sorted(
            [
                "Custom reports Not included",
                "Public API 1,250 / 10,000 Included",
                "Single sign-on Included",
            ]
        ), items
        for feature, e in check.items():
            name = {"sso": "Single sign-on", "api": "Public API", "reports": "Custom reports"}
            (item,) = [i for i in items if i.startswith(name[feature])]
            assert item.endswith("Included" if e["has_access"] else "Not included")


# --- security: headers, origins, content types ----------------------------------------------


async def test_every_page_and_refusal_is_sent_securely_and_foreign_posts_publish_nothing(
    settings: Settings, tenant: TenantKey, sessions: Sessions, stripe_base: str
) -> None:
    async with paying(settings, tenant, stripe_base) as st:
        s = st.settings
        await st.api.ok("POST", "/v1/customers", DANA)
        inv = await one_off(st.api, "dana", CONSULTING)
        assert inv["total"] == 13200  # 120.00 + 10 %
        draft = await st.api.ok("POST", "/v1/invoices", {"customer": "dana", "lines": [
            {"description": "Later", "quantity": "1", "unit_price": "5.00"}]})  # fmt: skip
        await rendered(st.api, inv["invoice_id"])
        hosted = await hosted_path(st.api, inv["invoice_id"])
        portal = await portal_path(st.api, "dana")
        prefix, token = hosted.rsplit("/", 1)
        altered = f"{prefix}/{token[:-1]}{'A' if token[-1] != 'A' else 'B'}"
        expired = signed(s, documents.Link("invoice", tenant.tenant_id, inv["invoice_id"],
                                           in_hours(-1), "en"))  # fmt: skip
        portal_expired = signed(s, documents.Link("portal", tenant.tenant_id, "dana",
                                                  in_hours(-1), "en"))  # fmt: skip
        of_draft = signed(s, documents.Link("invoice", tenant.tenant_id, draft["invoice_id"],
                                            in_hours(1), "en"))  # fmt: skip
        pages = [
            (hosted, 200),
            (portal, 200),
            (altered, 404),
            ("/hosted/invoices/garbage", 404),
            (expired, 410),
            (expired + "/pdf", 410),
            (portal_expired, 410),
            ("/portal/" + token, 404),  # an invoice's link is no portal session
            (of_draft, 404),
            (f"{portal}/invoices/in_nope/pdf", 404),
            (f"{portal}/invoices/{draft['invoice_id']}/pdf", 404),
        ]
        for path, status in pages:
            r = await st.http.get(path)
            assert r.status_code == status, (path, r.status_code)
            assert_secure(r)
            if status != 200:
                assert inv["number"] not in r.text and "132.00" not in r.text, path
        assert "card-setup" in (await st.http.get(hosted)).text  # the card form is there

        # the page's POSTs: JSON from the page's own origin, nothing else
        pm = await card(stripe_base, CARD_OK)
        body = {"payment_method": pm}
        json_ct = {"Content-Type": "application/json"}
        own = {"Origin": st.http.base_url.scheme + "://" + st.http.base_url.netloc.decode()}
        refused = [
            ({} | json_ct, body),  # no Origin
            ({"Origin": "https://evil.example"} | json_ct, body),
            ({"Origin": "null"} | json_ct, body),
            ({"Origin": own["Origin"] + ".evil.example"} | json_ct, body),
        ]
        for url in (f"{hosted}/pay", f"{hosted}/card-setup", f"{portal}/payment-method",
                    f"{portal}/card-setup"):  # fmt: skip
            for headers, payload in refused:
                r = await st.http.post(url, json=payload, headers=headers)
                assert r.status_code == 403, (url, headers, r.text)
                assert r.headers["cache-control"] == "no-store"
            for content_type in ("text/plain", "application/x-www-form-urlencoded"):
                r = await st.http.post(
                    url,
                    content=f'{{"payment_method": "{pm}"}}',
                    headers=own | {"Content-Type": content_type},
                )
                assert r.status_code == 403, (url, content_type, r.text)
        assert await pay_commands(sessions, s) == (0, 0)  # nothing accepted, nothing published
        assert (await st.api.get(f"/v1/invoices/{inv['invoice_id']}"))["status"] == "finalized"

        # the same request from the page itself is taken (so the refusals above were not
        # refused for another reason)
        r = await st.http.post(f"{hosted}/pay", json=body, headers=own)
        assert r.status_code == 202, r.text
        assert (await st.api.outcome(r.json()["command_id"]))["status"] == "succeeded"
        assert await pay_commands(sessions, s) == (1, 1)

        async def paid() -> bool:
            return bool((await st.api.get(f"/v1/invoices/{inv['invoice_id']}"))["status"]
                        == "paid")  # fmt: skip

        await wait_for(paid, timeout_s=30)


# --- tenants ----------------------------------------------------------------------------------


async def test_a_link_of_one_tenant_never_shows_another_tenants_customer(
    settings: Settings, tenant: TenantKey, sessions: Sessions
) -> None:
    s = page_settings(settings)
    async with stack(s, tenant, build_invoicing(s), build_documents(s)) as st:
        other = Client(st.http, await make_tenant(sessions, "globex"))
        # only tenant B (globex) has a "bob", with an invoice of EUR 777.77
        bob = {"external_id": "bob", "name": "Bob Globex GmbH", "currency": "EUR",
               "email": "bob@globex.example"}  # fmt: skip
        await other.ok("POST", "/v1/customers", bob)
        theirs = await one_off(other, "bob", [{"description": "Globex widgets", "quantity": "1",
                                               "unit_price": "777.77"}])  # fmt: skip
        assert theirs["total"] == 77777
        await rendered(other, theirs["invoice_id"])
        # tenant A (acme) has its own customer
        await st.api.ok("POST", "/v1/customers", {"external_id": "alice", "name": "Alice Ltd",
                                                  "currency": "USD"})  # fmt: skip
        ours = await one_off(st.api, "alice", [{"description": "Setup", "quantity": "1",
                                                "unit_price": "10.00"}])  # fmt: skip
        await rendered(st.api, ours["invoice_id"])

        def absent(r: httpx.Response) -> None:
            for secret in ("Bob Globex", "globex.example", "Globex widgets", "777.77",
                           "777,77", theirs["invoice_id"]):  # fmt: skip
                assert secret not in r.text, (secret, r.url)
            assert not r.content.startswith(b"%PDF")

        # B's own session shows its bob (the data exists and is reachable by B's link)
        r = await st.http.get(await portal_path(other, "bob"))
        assert r.status_code == 200 and "Bob Globex GmbH" in r.text and "777.77" in r.text

        t = tenant.tenant_id
        as_a_bob = signed(s, documents.Link("portal", t, "bob", in_hours(1), "en"))
        for path in (as_a_bob, f"{as_a_bob}/invoices/{theirs['invoice_id']}/pdf"):
            r = await st.http.get(path)
            assert r.status_code == 404, (path, r.status_code)  # A has no customer "bob"
            assert "There is nothing here for this link." in visible(r.text)
            absent(r)
        for path in (f"{as_a_bob}/status", f"{as_a_bob}/status?command=x"):
            r = await st.http.get(path)
            assert r.status_code == 404
            absent(r)
        # A's invoice link naming B's invoice, and A's own customer asking for B's PDF
        as_a_invoice = signed(s, documents.Link("invoice", t, theirs["invoice_id"], in_hours(1),
                                                "en"))  # fmt: skip
        alice = await portal_path(st.api, "alice")
        for path in (as_a_invoice, f"{as_a_invoice}/pdf", f"{as_a_invoice}/status",
                     f"{alice}/invoices/{theirs['invoice_id']}/pdf"):  # fmt: skip
            r = await st.http.get(path)
            assert r.status_code == 404, (path, r.status_code)
            absent(r)
        r = await st.http.get(alice)
        assert r.status_code == 200 and ours["number"] in r.text
        absent(r)


# --- a charge declined at collection -------------------------------------------------------


async def test_a_charge_declined_at_collection_leaves_the_invoice_due_and_says_why(
    settings: Settings, tenant: TenantKey, stripe_base: str
) -> None:
    async with paying(settings, tenant, stripe_base) as st:
        await st.api.ok("POST", "/v1/customers", DANA)
        inv = await one_off(st.api, "dana", CONSULTING)
        invoice_id = inv["invoice_id"]
        assert (inv["total"], inv["amount_due"]) == (13200, 13200)  # 120.00 + 10 % tax
        hosted = await hosted_path(st.api, invoice_id)
        own = {"Origin": st.http.base_url.scheme + "://" + st.http.base_url.netloc.decode()}

        page = await st.http.get(hosted)
        assert marked(page.text, "data-amount-due") == "$132.00"
        assert PUBLISHABLE_KEY_FOR_TESTS in page.text  # the card form, for Stripe.js

        # what Stripe.js is handed to confirm the card: a SetupIntent of the tenant's account
        r = await st.http.post(f"{hosted}/card-setup", json={}, headers=own)
        assert r.status_code == 200, r.text
        assert r.json()["client_secret"].startswith("seti_")

        # a card that attaches, and whose every charge is declined
        pm = await card(stripe_base, CARD_DECLINED_ON_CHARGE)
        r = await st.http.post(f"{hosted}/pay", json={"payment_method": pm}, headers=own)
        assert r.status_code == 202, r.text
        command, attempts = r.json()["command_id"], r.json()["attempts"]
        assert attempts == 0

        async def failed() -> dict[str, Any] | None:
            r = await st.http.get(f"{hosted}/status", params={"command": command,
                                                              "after": attempts})  # fmt: skip
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            payment = body["payment"]
            return body if payment is not None and payment["state"] == "failed" else None

        status = await wait_for(failed, timeout_s=30)
        assert status["command"] == {"status": "succeeded", "message": None}  # card attached
        # another invoice's link never reads this invoice's command
        other = await hosted_path(st.api, (await one_off(st.api, "dana", CONSULTING))["invoice_id"])
        r = await st.http.get(f"{other}/status", params={"command": command})
        assert r.status_code == 200 and "command" not in r.json(), r.text
        assert status["payment"]["attempt"] == 1
        assert status["payment"]["failure_message"] == "Your card was declined."
        assert status["invoice"] == {
            "status": "finalized",
            "state": "due",
            "state_label": "Due",
            "paid": False,
            "amount_due": 13200,
            "amount_due_text": "$132.00",
        }

        # nothing is paid: not in the API, not at Stripe, not on the page
        after = await st.api.get(f"/v1/invoices/{invoice_id}")
        assert (after["status"], after["amount_paid"], after["amount_due"]) == (
            "finalized", 0, 13200,
        )  # fmt: skip
        charged = [i for i in await intents(stripe_base)
                   if i["metadata"].get("billstream_invoice") == invoice_id]  # fmt: skip
        assert charged and all(i["status"] != "succeeded" for i in charged)
        assert all(i["amount"] == 13200 for i in charged)
        page = await st.http.get(hosted)
        assert marked(page.text, "data-state-badge") == "Due"
        assert marked(page.text, "data-amount-due") == "$132.00"
        assert "card-setup" in page.text  # still payable, with another card
        view = await st.api.get(f"/v1/invoices/{invoice_id}/payments")
        assert [p["state"] for p in view["payments"]] == ["failed"]
