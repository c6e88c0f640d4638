"""Customer hierarchies' reads over HTTP (docs/hierarchies.md): the customers below a customer,
the usage of a whole subtree, the invoices of a whole subtree, a consolidated invoice's
sections — real ingress, metering and invoicing workers, the real broker and PostgreSQL.
Amounts by hand below; one tenant's tree never reaches into another's.

The tree (USD), a parking operator and its garages:

    parkco            self     subscription "garage" from October
    ├── garage-a      parent
    ├── garage-b      parent
    │   └── level-b2  parent   (billed on parkco's invoices through garage-b)
    └── garage-c      self     a subscription of its own
    outsider          self     (no parent: in no subtree)
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
from pypdf import PdfReader
from sqlalchemy import text

from tests.conftest import make_tenant
from tests.integration.http import Client
from tests.integration.receipts_support import with_secrets
from tests.integration.support import Sessions
from tests.integration.test_invoicing import Stack, stack, usage_event
from workers.devstack import wait_for
from workers.documents.app import build as build_documents
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.settings import Settings

OCT = datetime(2031, 10, 1, tzinfo=UTC)
NOV = datetime(2031, 11, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)

HOURS = {"key": "parking_hours", "event_type": "parking.session", "aggregation": "sum",
         "value_property": "$.hours"}  # fmt: skip
GARAGE = {
    "key": "garage",
    "name": "Garage",
    "currency": "USD",
    "interval": "month",
    "prices": [
        {"kind": "flat", "key": "platform", "name": "Platform fee", "amount": "200.00"},
        {"kind": "per_unit", "key": "hours", "name": "Parking hours", "meter": "parking_hours",
         "unit_price": "0.50", "included_quantity": "100"},
    ],
}  # fmt: skip


def customer(external_id: str, parent: str | None = None, invoice_to: str = "self",
             currency: str = "USD") -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"external_id": external_id, "name": external_id.title(),
                            "currency": currency, "invoice_to": invoice_to}  # fmt: skip
    if parent is not None:
        body["parent"] = parent
    return body


TREE = [
    customer("parkco"),
    customer("garage-a", "parkco", "parent"),
    customer("garage-b", "parkco", "parent"),
    customer("level-b2", "garage-b", "parent"),
    customer("garage-c", "parkco"),
    customer("outsider"),
]
# October's parking hours, by customer (two sessions each)
OCTOBER_HOURS = {"parkco": (15, 25), "garage-a": (120, 180), "garage-b": (100, 50),
                 "level-b2": (45, 15), "garage-c": (260, 240), "outsider": (600, 400)}  # fmt: skip


@pytest.fixture
async def parking(settings: Settings, tenant: Any) -> AsyncIterator[Stack]:
    s = with_secrets(settings.model_copy(update={"invoicing_tick_s": 0.1}))
    async with stack(s, tenant, build_metering(s), build_invoicing(s), build_documents(s)) as st:
        await st.api.ok("POST", "/v1/meters", HOURS)
        await st.api.ok("POST", "/v1/plans", GARAGE)
        for body in TREE:
            await st.api.ok("POST", "/v1/customers", body)
        yield st


async def problem(api: Client, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
    r = await api.http.get(path, params=params, headers=api.auth)
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    body: dict[str, Any] = r.json()
    return r.status_code, body


def fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


# --- the customers below a customer ----------------------------------------------------------


async def test_descendants_by_depth_then_external_id_paged(parking: Stack) -> None:
    api = parking.api
    below = await api.get("/v1/customers/parkco/descendants")
    assert below == [
        {"external_id": "garage-a", "name": "Garage-A", "parent": "parkco",
         "invoice_to": "parent", "currency": "USD", "depth": 1},
        {"external_id": "garage-b", "name": "Garage-B", "parent": "parkco",
         "invoice_to": "parent", "currency": "USD", "depth": 1},
        {"external_id": "garage-c", "name": "Garage-C", "parent": "parkco",
         "invoice_to": "self", "currency": "USD", "depth": 1},
        {"external_id": "level-b2", "name": "Level-B2", "parent": "garage-b",
         "invoice_to": "parent", "currency": "USD", "depth": 2},
    ]  # fmt: skip
    # pages of two: after the last one of a page, the next
    first = await api.get("/v1/customers/parkco/descendants", limit=2)
    assert [c["external_id"] for c in first] == ["garage-a", "garage-b"]
    second = await api.get("/v1/customers/parkco/descendants", limit=2, after="garage-b")
    assert [c["external_id"] for c in second] == ["garage-c", "level-b2"]
    assert await api.get("/v1/customers/parkco/descendants", limit=2, after="level-b2") == []
    # a middle node: only its own subtree, depths counted from it
    assert [(c["external_id"], c["depth"]) for c in
            await api.get("/v1/customers/garage-b/descendants")] == [("level-b2", 1)]  # fmt: skip
    assert await api.get("/v1/customers/level-b2/descendants") == []
    assert await api.get("/v1/customers/outsider/descendants") == []
    # the customer view shows where it sits
    b2 = await api.get("/v1/customers/level-b2")
    assert (b2["parent"], b2["invoice_to"]) == ("garage-b", "parent")

    status, body = await problem(api, "/v1/customers/nobody/descendants")
    assert status == 404 and "nobody" in body["detail"]
    status, body = await problem(api, "/v1/customers/parkco/descendants", limit=1001)
    assert status == 422 and "limit" in fields(body)


# --- usage and invoices of a subtree --------------------------------------------------------


async def october_usage(st: Stack) -> None:
    events = [
        usage_event(f"{who}-{i}", who, OCT + timedelta(days=3 + i, hours=i), "parking.session",
                    hours=h)
        for who, hours in OCTOBER_HOURS.items()
        for i, h in enumerate(hours)
    ]  # fmt: skip
    await st.send_usage(events)
    for who, hours in OCTOBER_HOURS.items():
        await st.wait_usage("parking_hours", who, OCT, NOV, Decimal(sum(hours)))


def window(**more: Any) -> dict[str, Any]:
    return {"from": OCT.isoformat(), "to": NOV.isoformat(), **more}


async def test_the_usage_of_a_subtree_is_summed_over_its_customers(parking: Stack) -> None:
    st, api = parking, parking.api
    await october_usage(st)
    path = "/v1/meters/parking_hours/usage"

    body = await api.get(path, subject="parkco", subtree="true", **window())
    # parkco 40 + garage-a 300 + garage-b 150 + level-b2 60 + garage-c 500 (invoiced to
    # itself, still below parkco) = 1,050; the outsider's 1,000 is in no subtree of parkco
    assert [(r["subject"], r["value"]) for r in body["data"]] == [("parkco", 1050)]
    # without subtree: parkco's own 40
    own = await api.get(path, subject="parkco", **window())
    assert [r["value"] for r in own["data"]] == [40]
    # per customer of the subtree
    per = await api.get(path, subject="parkco", subtree="true", group_by="subject", **window())
    assert {r["subject"]: r["value"] for r in per["data"]} == {
        "garage-a": 300, "garage-b": 150, "garage-c": 500, "level-b2": 60, "parkco": 40,
    }  # fmt: skip
    # a middle node: garage-b 150 + level-b2 60 = 210
    mid = await api.get(path, subject="garage-b", subtree="true", **window())
    assert [(r["subject"], r["value"]) for r in mid["data"]] == [("garage-b", 210)]
    # by day: the subtree's sum per window, adding up to the whole
    days = await api.get(path, subject="parkco", subtree="true", window_size="day", **window())
    assert sum(r["value"] for r in days["data"]) == 1050

    # subtree needs exactly one subject
    for params in ({"subtree": "true"}, {"subtree": "true", "subject": ["parkco", "garage-a"]}):
        status, refused = await problem(api, path, **params)
        assert status == 422 and {"subject", "subtree"} <= fields(refused), refused
    status, unknown = await problem(api, path, subject="nobody", subtree="true")
    assert status == 404 and "nobody" in unknown["detail"]


async def billed(st: Stack, as_of: datetime) -> list[dict[str, Any]]:
    """Billing runs as of ``as_of`` until no draft waits for metering; every invoice then."""
    runs = 0

    async def done() -> list[dict[str, Any]] | None:
        nonlocal runs
        runs += 1
        run_id = f"run-{runs}"
        await st.api.ok("POST", "/v1/billing-runs", {"id": run_id, "as_of": as_of.isoformat()})

        async def completed() -> dict[str, Any] | None:
            r = await st.api.http.get(f"/v1/billing-runs/{run_id}", headers=st.api.auth)
            body: dict[str, Any] | None = r.json() if r.status_code == 200 else None
            return body if body is not None and body["status"] == "completed" else None

        result: dict[str, Any] = await wait_for(completed, timeout_s=30)
        return None if result["drafts_waiting"] else await st.invoices()

    invoices: list[dict[str, Any]] = await wait_for(done, timeout_s=60)
    return invoices


async def test_the_invoices_of_a_subtree_and_a_consolidated_invoices_sections(
    parking: Stack,
) -> None:
    st, api = parking, parking.api
    for who in ("parkco", "garage-c", "outsider"):
        sub = {"customer": who, "plan": "garage", "start": OCT.isoformat(), "id": f"s-{who}"}
        await api.ok("POST", "/v1/subscriptions", sub)
    await october_usage(st)
    invoices = await billed(st, NOV + HOUR)
    assert sorted(i["customer"] for i in invoices) == ["garage-c", "outsider", "parkco"]

    [parkco] = await st.invoices(customer="parkco")
    parkco = await api.get(f"/v1/invoices/{parkco['invoice_id']}")
    # the platform fee once; parkco's 40 hours within its 100 included: 0;
    # garage-a (300 - 100) x 0.50 = 100.00; garage-b (150 - 100) x 0.50 = 25.00;
    # level-b2 60 within its own 100: 0. Subtotal 200 + 0 + 100 + 25 + 0 = 325.00
    assert [(ln["price_key"], ln["subject"], ln["amount"]) for ln in parkco["lines"]] == [
        ("platform", None, 200_00),
        ("hours", "parkco", 0),
        ("hours", "garage-a", 100_00),
        ("hours", "garage-b", 25_00),
        ("hours", "level-b2", 0),
    ]
    assert (parkco["subtotal"], parkco["total"]) == (325_00, 325_00)
    assert parkco["sections"] == [
        {"customer": "parkco", "name": "Parkco", "subtotal": 200_00},
        {"customer": "garage-a", "name": "Garage-A", "subtotal": 100_00},
        {"customer": "garage-b", "name": "Garage-B", "subtotal": 25_00},
        {"customer": "level-b2", "name": "Level-B2", "subtotal": 0},
    ]
    assert sum(s["subtotal"] for s in parkco["sections"]) == parkco["subtotal"]
    # its PDF and its hosted page: a header per customer (name · external id, subtotal)
    pdf = await rendered_pdf(api, parkco["invoice_id"])
    for header in ("Parkco · parkco", "Garage-A · garage-a", "Garage-B · garage-b",
                   "Level-B2 · level-b2", "Subtotal $200.00", "Subtotal $100.00",
                   "Subtotal $25.00", "$325.00"):  # fmt: skip
        assert header in pdf, header
    assert pdf.index("· garage-a") < pdf.index("· garage-b") < pdf.index("· level-b2")
    r = await api.send("POST", f"/v1/invoices/{parkco['invoice_id']}/hosted-link", {})
    assert r.status_code == 201, r.text
    page = await st.http.get(urlsplit(r.json()["url"]).path)
    assert page.status_code == 200, page.text
    sections = re.findall(r'data-section="([^"]+)"', page.text)
    assert sections == ["parkco", "garage-a", "garage-b", "level-b2"]
    words = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.text)).split())
    for shown in ("Garage-A garage-a $100.00", "Garage-B garage-b $25.00", "$325.00"):
        assert shown in words, shown

    # garage-c, invoiced to itself: 200 + (500 - 100) x 0.50 = 400.00, no sections
    [garage_c] = await st.invoices(customer="garage-c")
    assert (garage_c["total"], garage_c["sections"]) == (400_00, [])

    # the invoices of the subtree: parkco's and garage-c's (below it), not the outsider's
    subtree = await st.invoices(customer="parkco", subtree="true")
    assert sorted((i["customer"], i["total"]) for i in subtree) == [
        ("garage-c", 400_00),
        ("parkco", 325_00),
    ]
    listed = next(i for i in subtree if i["customer"] == "parkco")
    assert listed["sections"] == parkco["sections"]
    # customers invoiced to their parent have none of their own
    assert await st.invoices(customer="garage-b", subtree="true") == []
    assert [i["customer"] for i in await st.invoices(customer="garage-c", subtree="true")] == [
        "garage-c"
    ]
    status, body = await problem(api, "/v1/invoices", subtree="true")
    assert status == 422 and "customer" in fields(body)
    status, body = await problem(api, "/v1/invoices", customer="nobody", subtree="true")
    assert status == 404


JPY_PLAN = {
    "key": "lots-jp", "name": "Lots JP", "currency": "JPY", "interval": "month",
    "prices": [
        {"kind": "flat", "key": "base", "name": "Base", "amount": "5000"},
        {"kind": "graduated", "key": "hours", "name": "Hours", "meter": "parking_hours",
         "tiers": [{"up_to": "100", "unit_price": "30"}, {"up_to": None, "unit_price": "20"}]},
    ],
}  # fmt: skip
BHD_PLAN = {
    "key": "lots-bh", "name": "Lots BH", "currency": "BHD", "interval": "month",
    "prices": [
        {"kind": "flat", "key": "base", "name": "Base", "amount": "20.000"},
        {"kind": "per_unit", "key": "hours", "name": "Hours", "meter": "parking_hours",
         "unit_price": "0.125", "minimum_spend": "5.000"},
    ],
}  # fmt: skip


async def test_consolidated_invoices_in_jpy_and_bhd_by_hand(parking: Stack) -> None:
    """docs/hierarchies.md's examples in exponent 0 and 3: each section its own tiers and
    its own minimum spend; tax once, by the payer's rate."""
    st, api = parking, parking.api
    for plan in (JPY_PLAN, BHD_PLAN):
        await api.ok("POST", "/v1/plans", plan)
    for payer, currency, plan, children in (
        ("tokyo-hq", "JPY", "lots-jp", ("shinjuku", "ueno")),
        ("manama-hq", "BHD", "lots-bh", ("seef", "juffair")),
    ):
        await api.ok("POST", "/v1/customers", customer(payer, currency=currency) | {
            "tax_rate": "0.1"})  # fmt: skip
        for c in children:
            await api.ok("POST", "/v1/customers", customer(c, payer, "parent", currency))
        sub = {"customer": payer, "plan": plan, "start": OCT.isoformat(), "id": f"s-{payer}"}
        await api.ok("POST", "/v1/subscriptions", sub)
    hours = {"tokyo-hq": 10, "shinjuku": 250, "ueno": 80, "seef": 123, "juffair": 10}
    await st.send_usage([
        usage_event(f"h-{who}", who, OCT + timedelta(days=9), "parking.session", hours=n)
        for who, n in hours.items()
    ])  # fmt: skip
    for who, n in hours.items():
        await st.wait_usage("parking_hours", who, OCT, NOV, Decimal(n))
    await billed(st, NOV + HOUR)

    def lines(inv: dict[str, Any]) -> list[tuple[str, str | None, int, bool]]:
        return [(ln["price_key"], ln["subject"], ln["amount"], ln["minimum_applied"])
                for ln in inv["lines"]]  # fmt: skip

    [tokyo] = await st.invoices(customer="tokyo-hq")
    # JPY: ¥5,000 once; tokyo-hq 10 h x ¥30 = ¥300; shinjuku 100 x ¥30 + 150 x ¥20 = ¥6,000
    # (its own first tier); ueno 80 x ¥30 = ¥2,400. Subtotal ¥13,700, tax 10 % ¥1,370,
    # total ¥15,070 (pooled, 340 h would have been 100 x 30 + 240 x 20 = ¥7,800, not ¥8,700)
    assert lines(tokyo) == [
        ("base", None, 5000, False),
        ("hours", "tokyo-hq", 300, False),
        ("hours", "shinjuku", 6000, False),
        ("hours", "ueno", 2400, False),
    ]
    assert (tokyo["subtotal"], tokyo["tax"], tokyo["total"]) == (13700, 1370, 15070)
    assert [(x["customer"], x["subtotal"]) for x in tokyo["sections"]] == [
        ("tokyo-hq", 5300), ("shinjuku", 6000), ("ueno", 2400),
    ]  # fmt: skip

    [manama] = await st.invoices(customer="manama-hq")
    # BHD (fils): BD 20.000 once; manama-hq 0 h, juffair 10 h x 0.125 = 1.250: each raised
    # to its own minimum spend of BD 5.000; seef 123 x 0.125 = 15.375. Subtotal 45.375,
    # tax 10 % = 4.5375 → 4.538 (half-even), total BD 49.913
    assert lines(manama) == [
        ("base", None, 20000, False),
        ("hours", "manama-hq", 5000, True),
        ("hours", "juffair", 5000, True),
        ("hours", "seef", 15375, False),
    ]
    assert (manama["subtotal"], manama["tax"], manama["total"]) == (45375, 4538, 49913)
    assert [(x["customer"], x["subtotal"]) for x in manama["sections"]] == [
        ("manama-hq", 25000), ("juffair", 5000), ("seef", 15375),
    ]  # fmt: skip


async def rendered_pdf(api: Client, invoice_id: str) -> str:
    """The invoice's PDF once rendered, as text (no-break spaces as spaces)."""

    async def ready() -> bytes | None:
        r = await api.http.get(f"/v1/invoices/{invoice_id}/pdf", headers=api.auth)
        assert r.status_code in (200, 503), r.text
        return r.content if r.status_code == 200 else None

    content: bytes = await wait_for(ready, timeout_s=30)
    pages = PdfReader(io.BytesIO(content)).pages
    return "\n".join(p.extract_text() for p in pages).replace("\u00a0", " ")


async def test_a_subtree_over_5000_customers_is_refused(parking: Stack, sessions: Sessions) -> None:
    # 5,000 customers below garage-a (written straight to the table: 5,000 commands would
    # only slow the test); parkco's subtree then holds 5,005 customers, garage-a's 5,001
    async with sessions() as session, session.begin():
        await session.execute(
            text(
                "INSERT INTO customers (id, tenant_id, external_id, name, currency, tax_exempt, "
                "net_terms_days, parent, invoice_to) "
                "SELECT 'bulk-' || n, 'acme', 'bay-' || n, 'Bay ' || n, 'USD', false, 0, "
                "'garage-a', 'self' FROM generate_series(1, 5000) AS n"
            )
        )
    api = parking.api
    for who in ("parkco", "garage-a"):
        status, body = await problem(
            api, "/v1/meters/parking_hours/usage", subject=who, subtree="true"
        )
        assert status == 422 and "5,000" in body["detail"] and fields(body) == {"subject"}
        status, body = await problem(api, "/v1/invoices", customer=who, subtree="true")
        assert status == 422 and fields(body) == {"subtree"}
    # a smaller subtree still answers
    mid = await api.get("/v1/meters/parking_hours/usage", subject="garage-b", subtree="true")
    assert mid["data"] == [] or mid["data"][0]["subject"] == "garage-b"
    # and the listing pages through them
    page = await api.get("/v1/customers/garage-a/descendants", limit=1000)
    assert len(page) == 1000 and {c["depth"] for c in page} == {1}


# --- tenants --------------------------------------------------------------------------------


async def test_another_tenants_customers_are_never_in_a_subtree_or_a_parent(
    parking: Stack, sessions: Sessions
) -> None:
    st = parking
    await october_usage(st)
    globex = Client(st.http, await make_tenant(sessions, "globex"))

    # globex names acme's parkco as a parent: no such customer in globex
    outcome = await globex.command("POST", "/v1/customers", customer("lot-9", "parkco", "parent"))
    assert outcome["status"] == "failed" and outcome["error"]["field"] == "parent"
    status, _ = await problem(globex, "/v1/customers/lot-9")
    assert status == 404
    # acme's tree is not globex's to read
    for path, params in (
        ("/v1/customers/parkco/descendants", {}),
        ("/v1/meters/parking_hours/usage", {"subject": "parkco", "subtree": "true"}),
        ("/v1/invoices", {"customer": "parkco", "subtree": "true"}),
    ):
        status, _ = await problem(globex, path, **params)
        assert status == 404, path

    # globex's own parkco, with a garage-a of its own: its subtree is its own customers only
    await globex.ok("POST", "/v1/meters", HOURS)
    await globex.ok("POST", "/v1/customers", customer("parkco"))
    await globex.ok("POST", "/v1/customers", customer("garage-a", "parkco", "parent"))
    assert [c["external_id"] for c in await globex.get("/v1/customers/parkco/descendants")] == [
        "garage-a"
    ]
    theirs = await globex.get(
        "/v1/meters/parking_hours/usage", subject="parkco", subtree="true", **window()
    )
    assert theirs["data"] == []  # acme's 1,050 hours are not globex's
    assert await globex.get("/v1/invoices", customer="parkco", subtree="true") == []
    # and acme's tree is as it was
    assert len(await st.api.get("/v1/customers/parkco/descendants")) == 4
