"""The hosted invoice page and the customer portal in Chromium, against the real stack
(conftest.py): a customer pays an invoice with the card they type into the (mock) Stripe.js
form and sees it paid; downloads its PDF; altered and expired links show nothing; the portal
shows the customer's invoices, this period's usage as a chart and the credit balance, works
at phone width, and never serves another customer's invoice.

The worked example (computed by hand): plan "pro" = USD 49.00 a month + 0.01 per API call
(the first 100 included), tax 10 %. November (no calls): 49.00 + 4.90 tax = USD 53.90.
December so far: 1,250 calls metered by hand (250 + 1,000), shown on the portal."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.browser.conftest import Stack, invoices_of, rendered, screenshots, stack
from tests.conftest import TenantKey, make_tenant
from tests.integration.payments_support import (
    CARD_DECLINED,
    CARD_OK,
    card,
    intents,
)
from tests.integration.support import Sessions
from workers import documents
from workers.devstack import wait_for
from workers.settings import Settings

USD_53_90 = "$53.90"


def _month_start(at: datetime, back: int = 0) -> datetime:
    year, month = at.year, at.month - back
    while month < 1:
        year, month = year - 1, month + 12
    return datetime(year, month, 1, tzinfo=UTC)


async def seed(s: Stack) -> dict[str, Any]:
    """Meter, plan, two customers (alice and bob) subscribed since last month: each gets
    last month's invoice (USD 53.90); alice's calls this month are 250 + 1,000."""
    now = datetime.now(UTC)
    await s.api.ok(
        "POST",
        "/v1/meters",
        {
            "key": "api_calls",
            "name": "API calls",
            "event_type": "api.call",
            "aggregation": "sum",
            "value_property": "$.count",
        },
    )
    await s.api.ok(
        "PUT",
        "/v1/branding",
        {
            "name": "Acme Cloud Ltd",
            "accent_color": "#0E7C66",
            "email": "billing@acme.example",
            "website": "acme.example",
            "tax_id": "GB123456789",
            "address": {"line1": "1 Market Street", "city": "London", "country": "GB"},
        },
    )
    await s.api.ok(
        "POST",
        "/v1/plans",
        {
            "key": "pro",
            "name": "Pro",
            "currency": "USD",
            "interval": "month",
            "prices": [
                {"kind": "flat", "key": "base", "name": "Pro plan", "amount": "49.00"},
                {
                    "kind": "per_unit",
                    "key": "calls",
                    "name": "API calls",
                    "meter": "api_calls",
                    "unit_price": "0.01",
                    "included_quantity": "100",
                },
            ],
        },
    )
    start = _month_start(now, back=1)
    for who, name in (("alice", "Alice Ltd"), ("bob", "Bob GmbH")):
        await s.api.ok(
            "POST",
            "/v1/customers",
            {
                "external_id": who,
                "name": name,
                "email": f"billing@{who}.example",
                "currency": "USD",
                "tax_rate": "0.1",
            },
        )
        await s.api.ok(
            "POST",
            "/v1/subscriptions",
            {"customer": who, "plan": "pro", "start": start.isoformat()},
        )
    events = [
        {
            "id": f"call-{i}",
            "source": "tests",
            "type": "api.call",
            "subject": "alice",
            "time": (now - timedelta(minutes=5 + i)).isoformat(),
            "data": {"count": count},
        }
        for i, count in enumerate((250, 1000))
        if now - timedelta(minutes=5 + i) >= _month_start(now)
    ]
    if events:
        r = await s.api.send("POST", "/v1/events", {"events": events})
        assert r.status_code == 202, r.text
    alice = (await invoices_of(s, "alice"))[0]
    bob = (await invoices_of(s, "bob"))[0]
    return {"alice": alice, "bob": bob, "calls": sum(e["data"]["count"] for e in events)}


async def hosted_path(s: Stack, invoice_id: str) -> str:
    r = await s.api.send("POST", f"/v1/invoices/{invoice_id}/hosted-link", {})
    assert r.status_code == 201, r.text
    return urlsplit(r.json()["url"]).path


async def portal_path(s: Stack, customer: str, **extra: Any) -> str:
    r = await s.api.send("POST", "/v1/portal/sessions", {"customer": customer, **extra})
    assert r.status_code == 201, r.text
    return urlsplit(r.json()["url"]).path


async def type_card(page: Any, number: str) -> None:
    """Into localstripe's mock card element (its inputs are named by placeholder)."""
    for field, value in (
        ("number", number),
        ("exp_month", "12"),
        ("exp_year", "34"),
        ("cvc", "123"),
        ("postal_code", "10001"),
    ):
        await page.fill(f".card-field input[placeholder={field}]", value)


async def test_a_customer_pays_the_hosted_invoice_by_card_and_downloads_its_pdf(
    settings: Settings, tenant: TenantKey, sessions: Sessions, stripe_base: str, browser: Any
) -> None:
    async with stack(settings, tenant, stripe_base) as s:
        seeded = await seed(s)
        invoice = seeded["alice"]
        assert (invoice["total"], invoice["amount_due"]) == (5390, 5390)  # 49.00 + 10 %
        await rendered(s, invoice["invoice_id"])
        path = await hosted_path(s, invoice["invoice_id"])
        page = await browser.new_page(viewport={"width": 1100, "height": 1300})
        response = await page.goto(s.base + path)
        assert response.status == 200
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert await page.get_attribute("html", "lang") == "en"
        body = await page.inner_text("main")
        assert invoice["number"] in body
        assert USD_53_90 in body and "$49.00" in body and "$4.90" in body
        await page.wait_for_selector(".card-field input[placeholder=number]")
        if (shots := screenshots()) is not None:
            await page.screenshot(path=str(shots / "hosted-invoice.png"), full_page=True)

        # the PDF link serves the stored PDF
        href = await page.get_attribute("a[download]", "href")
        assert href is not None
        pdf = await s.http.get(href)
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        assert pdf.headers["content-type"] == "application/pdf"

        # a card Stripe declines: its message, and nothing is paid
        await type_card(page, CARD_DECLINED)
        await page.click("form[data-card-form] button[type=submit]")
        await page.wait_for_selector(".message.error")
        assert "declined" in (await page.inner_text(".message")).lower()
        assert (await s.api.get(f"/v1/invoices/{invoice['invoice_id']}"))["status"] == "finalized"

        # the pay button is reached with the keyboard, and Enter pays
        await type_card(page, CARD_OK)
        await page.focus("body")
        for _ in range(60):
            await page.keyboard.press("Tab")
            if await page.evaluate(
                "document.activeElement && document.activeElement.matches("
                "'form[data-card-form] button[type=submit]')"
            ):
                break
        else:
            raise AssertionError("the pay button is not reachable by Tab")
        await page.keyboard.press("Enter")
        await page.wait_for_selector(".message.ok", timeout=30_000)
        assert "Payment received" in await page.inner_text(".message")
        assert await page.inner_text("[data-state-badge]") == "Paid"
        assert await page.inner_text("[data-amount-due]") == "$0.00"

        paid = await s.api.get(f"/v1/invoices/{invoice['invoice_id']}")
        assert (paid["status"], paid["amount_paid"], paid["amount_due"]) == ("paid", 5390, 0)
        charged = [
            i
            for i in await intents(stripe_base)
            if i["metadata"].get("billstream_invoice") == invoice["invoice_id"]
        ]
        assert [(i["amount"], i["status"]) for i in charged] == [(5390, "succeeded")]

        # reloaded: paid, no card form
        await page.reload()
        assert await page.inner_text("[data-state-badge]") == "Paid"
        assert await page.query_selector("form[data-card-form]") is None
        if shots is not None:
            await page.screenshot(path=str(shots / "hosted-invoice-paid.png"), full_page=True)

        # pressing Pay twice at once charges once (bob's invoice; the card made outside)
        bob = seeded["bob"]["invoice_id"]
        bob_path = await hosted_path(s, bob)
        pm = await card(stripe_base, CARD_OK)
        headers = {"Origin": s.base, "Content-Type": "application/json"}
        first, second = await asyncio.gather(
            *(
                s.http.post(f"{bob_path}/pay", json={"payment_method": pm}, headers=headers)
                for _ in range(2)
            )
        )
        assert (first.status_code, second.status_code) == (202, 202)

        async def bob_paid() -> bool:
            return bool((await s.api.get(f"/v1/invoices/{bob}"))["status"] == "paid")

        await wait_for(bob_paid, timeout_s=30)
        for r in (first, second):
            await s.api.outcome(r.json()["command_id"])
        bob_intents = [
            i for i in await intents(stripe_base) if i["metadata"].get("billstream_invoice") == bob
        ]
        assert len(bob_intents) == 1 and bob_intents[0]["amount"] == 5390

        # a POST from elsewhere is refused
        other = await s.http.post(
            f"{bob_path}/pay",
            json={"payment_method": pm},
            headers={"Origin": "https://evil.example", "Content-Type": "application/json"},
        )
        assert other.status_code == 403


async def test_an_altered_or_expired_link_shows_nothing(
    settings: Settings, tenant: TenantKey, sessions: Sessions, stripe_base: str, browser: Any
) -> None:
    async with stack(settings, tenant, stripe_base) as s:
        seeded = await seed(s)
        invoice = seeded["alice"]
        path = await hosted_path(s, invoice["invoice_id"])
        prefix, token = path.rsplit("/", 1)
        version, payload, mac = token.split(".")
        i = len(payload) // 2
        altered = payload[:i] + ("A" if payload[i] != "A" else "B") + payload[i + 1 :]
        expired = s.link("invoice", invoice["invoice_id"], timedelta(seconds=-60))
        portal_expired = s.link("portal", "alice", timedelta(seconds=-60))
        page = await browser.new_page()
        for url, status in (
            (f"{prefix}/{version}.{altered}.{mac}", 404),
            (f"{prefix}/{token[:-1]}{'A' if token[-1] != 'A' else 'B'}", 404),
            (expired, 410),
            (expired + "/pdf", 410),
            (portal_expired, 410),
            ("/portal/" + token, 404),  # an invoice's link is no portal session
        ):
            response = await page.goto(s.base + url)
            assert response.status == status, url
            text = await page.inner_text("body")
            assert "This link is not valid or has expired" in text
            assert invoice["number"] not in text and "53.90" not in text and "Alice" not in text


async def test_the_portal_shows_invoices_usage_and_credit_and_only_its_customers(
    settings: Settings, tenant: TenantKey, sessions: Sessions, stripe_base: str, browser: Any
) -> None:
    async with stack(settings, tenant, stripe_base) as s:
        seeded = await seed(s)
        invoice, bob = seeded["alice"], seeded["bob"]
        await s.api.ok(
            "POST", "/v1/customers/alice/credits/grants", {"amount": 2500, "source": "promotional"}
        )
        calls = seeded["calls"]

        async def metered() -> bool:
            r = await s.api.get("/v1/meters/api_calls/usage", subject="alice")
            return bool(r["data"] and r["data"][0]["value"] == calls)

        if calls:
            await wait_for(metered, timeout_s=30)
        await rendered(s, invoice["invoice_id"])
        await rendered(s, bob["invoice_id"])
        path = await portal_path(s, "alice", return_url="https://app.acme.example/account")
        page = await browser.new_page(viewport={"width": 1100, "height": 1400})
        response = await page.goto(s.base + path)
        assert response.status == 200
        main = await page.inner_text("main")
        row = await page.inner_text(f"tr[data-invoice='{invoice['invoice_id']}']")
        assert invoice["number"] in row and USD_53_90 in row
        assert bob["invoice_id"] not in await page.content()
        assert "$25.00" in await page.inner_text("[data-credit-balance]")  # 2,500 cents
        assert await page.inner_text("[data-meter=api_calls]") == f"{calls:,}"
        assert await page.locator("figure.meter svg[role=img] rect.bar").count() >= 1
        assert "Pro" in main
        back = await page.get_attribute("a.back", "href")
        assert back == "https://app.acme.example/account"
        if (shots := screenshots()) is not None:
            await page.screenshot(path=str(shots / "portal.png"), full_page=True)

        # its invoice's PDF, and no other customer's
        pdf_href = await page.get_attribute(
            f"tr[data-invoice='{invoice['invoice_id']}'] a[download]", "href"
        )
        assert pdf_href is not None
        pdf = await s.http.get(pdf_href)
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        theirs = await page.goto(s.base + f"{path}/invoices/{bob['invoice_id']}/pdf")
        assert theirs.status == 404
        assert "%PDF" not in await page.content()

        # a tenant's link never reads another tenant's rows
        other = await make_tenant(sessions, "other-tenant")
        assert other.tenant_id != tenant.tenant_id
        assert s.settings.secrets_key is not None
        keys = documents.link_keys(s.settings.secrets_key.get_secret_value())
        foreign = documents.PATHS["portal"] + documents.sign(
            keys,
            documents.Link(
                "portal", other.tenant_id, "alice", datetime.now(UTC) + timedelta(hours=1)
            ),
        )
        assert (await page.goto(s.base + foreign)).status == 404

        # a phone: nothing scrolls sideways
        phone = await browser.new_page(viewport={"width": 360, "height": 800})
        await phone.goto(s.base + path)
        width = await phone.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert width[0] <= width[1], width
        if shots is not None:
            await phone.screenshot(path=str(shots / "portal-phone.png"), full_page=True)

        # the payment method: a card saved through the portal becomes the customer's default
        await page.goto(s.base + path)
        await page.wait_for_selector(".card-field input[placeholder=number]")
        await type_card(page, CARD_OK)
        await page.click("form[data-card-form] button[type=submit]")
        await page.wait_for_selector(".message.ok", timeout=30_000)
        async with httpx.AsyncClient(base_url=s.base) as http:
            r = await http.post(
                f"{path}/payment-method",
                json={"payment_method": "pm_x"},
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 403  # no Origin: not from the page
