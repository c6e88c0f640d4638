"""Tax rates as resources end to end over HTTP (real ingress and invoicing worker, the real
broker and PostgreSQL): versions created, read back, changed while unused, immutable once an
invoice was finalized with them (but for closing), never overlapping, all inclusive or all
exclusive; the 422s at the door; rate names that do not exist failing the commands that name
them; customers' tax status and tax IDs (docs/taxes.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import topics
from tests.conftest import TenantKey, make_tenant
from tests.integration.http import Client
from tests.integration.support import Sessions, read_all, wait_outbox_drained
from tests.integration.test_invoicing import Stack, stack
from workers.invoicing.app import build as build_invoicing
from workers.settings import Settings

Y2031 = datetime(2031, 1, 1, tzinfo=UTC)
FEB = datetime(2031, 2, 1, tzinfo=UTC)
MAR = datetime(2031, 3, 1, tzinfo=UTC)
APR = datetime(2031, 4, 1, tzinfo=UTC)
Y2032 = datetime(2032, 1, 1, tzinfo=UTC)
Y2033 = datetime(2033, 1, 1, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def invoicing(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = settings.model_copy(update={"invoicing_tick_s": 0.1})
    async with stack(s, tenant, build_invoicing(s)) as st:
        yield st


def rate(name: str, pct: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "display_name": name.upper(), "percentage": pct, "country": "DE"} | kw


async def refused(st: Stack, method: str, path: str, body: Any) -> dict[str, Any]:
    """A write the command refuses: its error (code, field, message)."""
    outcome = await st.api.command(method, path, body)
    assert outcome["status"] == "failed", outcome
    error: dict[str, Any] = outcome["error"]
    return error


async def invalid(st: Stack, method: str, path: str, body: Any) -> list[str]:
    """A write the door refuses (422): the fields it names."""
    r = await st.api.send(method, path, body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return [e["field"] for e in r.json()["errors"]]


async def rate_events(st: Stack, sessions: Sessions, id: str) -> list[tuple[str, str]]:
    """(type, percentage) of every tax_rate.* event of version ``id``, in order."""
    await wait_outbox_drained(sessions)
    records, _ = await read_all(st.settings, topics.EVENTS_INVOICING)
    events = [json.loads(r.value) for r in records]
    return [
        (e["type"], e["data"]["percentage"])
        for e in events
        if e["type"].startswith("tax_rate.") and e["subject"] == id
        and e["tenantid"] == st.api.key.tenant_id
    ]  # fmt: skip


async def test_a_rate_is_created_read_back_and_changed_while_unused(
    invoicing: Stack, sessions: Sessions
) -> None:
    st = invoicing
    body = rate("vat-de", "19", description="German VAT", effective_from=iso(Y2031))
    r = await st.api.send("POST", "/v1/tax_rates", body)
    assert r.status_code == 202, r.text
    id = r.json()["tax_rate_id"]
    assert id.startswith("txr_")
    outcome = await st.api.outcome(r.json()["command_id"])
    assert outcome["status"] == "succeeded", outcome
    assert outcome["result"] == {"tax_rate_id": id, "name": "vat-de"}

    shown = await st.api.get(f"/v1/tax_rates/{id}")
    assert shown == {
        "id": id, "name": "vat-de", "display_name": "VAT-DE", "description": "German VAT",
        "percentage": "19", "inclusive": False, "country": "DE", "jurisdiction": None,
        "taxable_base_factor": "1", "effective_from": "2031-01-01T00:00:00Z",
        "effective_until": None, "used": False,
    }  # fmt: skip
    assert [v["id"] for v in await st.api.get("/v1/tax_rates", name="vat-de")] == [id]
    assert await st.api.get("/v1/tax_rates", name="vat-fr") == []

    # the same version again: succeeds, writes nothing, emits nothing
    again = await st.api.ok("POST", "/v1/tax_rates", body | {"id": id})
    assert again == {"tax_rate_id": id, "name": "vat-de"}
    assert await rate_events(st, sessions, id) == [("tax_rate.created", "19")]

    # no invoice used it yet: it may change
    await st.api.ok("POST", "/v1/tax_rates", body | {"id": id, "percentage": "19.5"})
    assert (await st.api.get(f"/v1/tax_rates/{id}"))["percentage"] == "19.5"
    assert await rate_events(st, sessions, id) == [
        ("tax_rate.created", "19"),
        ("tax_rate.updated", "19.5"),
    ]

    r = await st.api.http.get("/v1/tax_rates/txr_nope", headers=st.api.auth)
    assert r.status_code == 404, r.text
    assert r.json()["type"] == "urn:billstream:problem:not_found"


async def test_a_used_rate_is_immutable_but_may_be_closed_after_what_it_taxed(
    invoicing: Stack, sessions: Sessions
) -> None:
    st = invoicing
    body = rate("vat-x", "10", id="vat-x-2031", effective_from=iso(Y2031))
    await st.api.ok("POST", "/v1/tax_rates", body)
    customer = {"external_id": "kiosk", "name": "Kiosk", "currency": "EUR"}
    await st.api.ok("POST", "/v1/customers", customer)
    line = {"description": "Consulting", "quantity": "1", "unit_price": "100.00",
            "tax_rates": ["vat-x"], "period_start": iso(MAR), "period_end": iso(MAR)}  # fmt: skip
    invoice = await st.api.ok(
        "POST", "/v1/invoices", {"customer": "kiosk", "finalize": True, "lines": [line]}
    )
    # EUR 100.00 = 10,000 cents + 10 % = 1,000 -> 11,000
    assert (invoice["status"], invoice["total"]) == ("finalized", 11_000), invoice
    assert (await st.api.get("/v1/tax_rates/vat-x-2031"))["used"] is True

    error = await refused(st, "POST", "/v1/tax_rates", body | {"percentage": "12"})
    assert (error["code"], error["field"]) == ("conflict", "percentage"), error
    assert "used by finalized invoices: create a new version" in error["message"]
    error = await refused(st, "POST", "/v1/tax_rates", body | {"display_name": "MwSt"})
    assert error["field"] == "display_name", error
    # closing it before the period it taxed (March) would change what that invoice used
    error = await refused(st, "POST", "/v1/tax_rates", body | {"effective_until": iso(FEB)})
    assert (error["code"], error["field"]) == ("conflict", "effective_until"), error
    assert "2031-03-01T00:00:00Z" in error["message"]
    shown = await st.api.get("/v1/tax_rates/vat-x-2031")
    assert (shown["percentage"], shown["display_name"], shown["effective_until"]) == (
        "10", "VAT-X", None,
    )  # fmt: skip

    # closing it after: allowed; the rate change is a new version from then
    await st.api.ok("POST", "/v1/tax_rates", body | {"effective_until": iso(APR)})
    closed = await st.api.get("/v1/tax_rates/vat-x-2031")
    assert (closed["effective_until"], closed["used"]) == ("2031-04-01T00:00:00Z", True)
    new = rate("vat-x", "12", id="vat-x-2031-04", effective_from=iso(APR))
    await st.api.ok("POST", "/v1/tax_rates", new)
    versions = await st.api.get("/v1/tax_rates", name="vat-x")
    assert [(v["id"], v["percentage"], v["used"]) for v in versions] == [
        ("vat-x-2031", "10", True),
        ("vat-x-2031-04", "12", False),
    ]
    assert await rate_events(st, sessions, "vat-x-2031") == [
        ("tax_rate.created", "10"),
        ("tax_rate.updated", "10"),
    ]
    # the invoice finalized with it is unchanged
    stored = await st.api.get(f"/v1/invoices/{invoice['invoice_id']}")
    assert [(t["tax_rate_id"], t["percentage"], t["tax"]) for t in stored["tax_breakdown"]] == [
        ("vat-x-2031", "10", 1_000)
    ]


async def test_versions_of_a_name_never_overlap_and_agree_on_inclusive(
    invoicing: Stack,
) -> None:
    st = invoicing
    first = rate("gst", "5", id="gst-2031", effective_from=iso(Y2031), effective_until=iso(Y2032))
    await st.api.ok("POST", "/v1/tax_rates", first)

    inside = rate("gst", "6", id="gst-mid", effective_from=iso(MAR))
    error = await refused(st, "POST", "/v1/tax_rates", inside)
    assert (error["code"], error["field"]) == ("conflict", "effective_from"), error
    assert "'gst-2031'" in error["message"]
    unbounded = rate("gst", "6", id="gst-always")
    assert (await refused(st, "POST", "/v1/tax_rates", unbounded))["field"] == "effective_from"
    before = rate("gst", "4", id="gst-old", effective_until=iso(FEB))
    assert (await refused(st, "POST", "/v1/tax_rates", before))["field"] == "effective_from"
    for id in ("gst-mid", "gst-always", "gst-old"):  # nothing written
        r = await st.api.http.get(f"/v1/tax_rates/{id}", headers=st.api.auth)
        assert r.status_code == 404, r.text

    # effective_until is exclusive: the next version may start exactly then
    await st.api.ok("POST", "/v1/tax_rates", rate("gst", "6", id="gst-2032",
                                                   effective_from=iso(Y2032)))  # fmt: skip
    # an unused version may not be moved over another either
    error = await refused(st, "POST", "/v1/tax_rates", first | {"effective_until": iso(Y2033)})
    assert (error["code"], error["field"]) == ("conflict", "effective_from"), error

    gross = rate("gst", "7", id="gst-2040", inclusive=True,
                 effective_from=iso(datetime(2040, 1, 1, tzinfo=UTC)))  # fmt: skip
    error = await refused(st, "POST", "/v1/tax_rates", gross)
    assert (error["code"], error["field"]) == ("conflict", "inclusive"), error
    # a version keeps its name
    error = await refused(st, "POST", "/v1/tax_rates", first | {"name": "hst"})
    assert (error["code"], error["field"]) == ("conflict", "name"), error

    versions = await st.api.get("/v1/tax_rates", name="gst")
    assert [(v["id"], v["percentage"]) for v in versions] == [("gst-2031", "5"), ("gst-2032", "6")]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"percentage": 19.5}, "percentage"),  # a float
        ({"percentage": "100.01"}, "percentage"),
        ({"percentage": "-1"}, "percentage"),
        ({"percentage": "12%"}, "percentage"),
        ({"taxable_base_factor": "0"}, "taxable_base_factor"),
        ({"taxable_base_factor": "13/12"}, "taxable_base_factor"),
        ({"taxable_base_factor": "half"}, "taxable_base_factor"),
        ({"taxable_base_factor": 0.5}, "taxable_base_factor"),
        ({"effective_from": iso(Y2032), "effective_until": iso(Y2032)}, "effective_until"),
        ({"effective_from": iso(Y2032), "effective_until": iso(Y2031)}, "effective_until"),
        ({"country": "Germany"}, "country"),
        ({"name": "VAT DE"}, "name"),
    ],
)
async def test_the_door_refuses_a_bad_rate_naming_the_field(
    invoicing: Stack, change: dict[str, Any], field: str
) -> None:
    st = invoicing
    assert await invalid(st, "POST", "/v1/tax_rates", rate("vat", "19") | change) == [field]
    assert await st.api.get("/v1/tax_rates") == []


async def test_customers_carry_tax_rates_status_and_ids(invoicing: Stack) -> None:
    st = invoicing
    await st.api.ok("POST", "/v1/tax_rates", rate("vat-de", "19", id="vat-de"))
    body = {"external_id": "gmbh", "name": "GmbH", "currency": "EUR", "tax_rates": ["vat-de"],
            "tax_status": "reverse_charge",
            "tax_ids": [{"type": "eu_vat", "value": "de 123.456.789"},
                        {"type": "id_npwp", "value": "0123.4567.8901.2345"}]}  # fmt: skip
    await st.api.ok("POST", "/v1/customers", body)
    shown = await st.api.get("/v1/customers/gmbh")
    assert (shown["tax_rates"], shown["tax_status"], shown["tax_ids"]) == (
        ["vat-de"],
        "reverse_charge",
        [{"type": "eu_vat", "value": "DE123456789"},
         {"type": "id_npwp", "value": "0123456789012345"}],
    )  # fmt: skip

    npwp = body | {"tax_ids": [{"type": "id_npwp", "value": "0123.4567.8901.234"}]}  # 15 digits
    r = await st.api.send("POST", "/v1/customers", npwp)
    assert r.status_code == 422, r.text
    [error] = r.json()["errors"]
    assert error["field"] == "tax_ids[0]"
    assert "NPWP has 16 digits" in error["reason"]
    bad = [{"type": "gb_vat", "value": "GB123"}, {"type": "eu_vat", "value": "DE12345678"}]
    vat = body | {"tax_ids": bad}
    r = await st.api.send("POST", "/v1/customers", vat)
    assert r.status_code == 422, r.text
    fields = [(e["field"], "VAT number" in e["reason"]) for e in r.json()["errors"]]
    assert fields == [("tax_ids[0]", True), ("tax_ids[1]", True)]
    unknown_country = body | {"tax_ids": [{"type": "eu_vat", "value": "US123456789"}]}
    assert await invalid(st, "POST", "/v1/customers", unknown_country) == ["tax_ids[0]"]
    # nothing of those reached the customer
    assert (await st.api.get("/v1/customers/gmbh"))["tax_ids"] == shown["tax_ids"]


async def test_a_rate_name_that_does_not_exist_fails_the_command_naming_the_field(
    invoicing: Stack,
) -> None:
    st = invoicing
    await st.api.ok("POST", "/v1/tax_rates", rate("vat-de", "19", id="vat-de"))

    customer = {"external_id": "ghost", "name": "Ghost", "currency": "EUR",
                "tax_rates": ["vat-de", "vat-xx"]}  # fmt: skip
    error = await refused(st, "POST", "/v1/customers", customer)
    assert (error["code"], error["field"]) == ("not_found", "tax_rates[1]"), error
    assert "'vat-xx'" in error["message"]
    r = await st.api.http.get("/v1/customers/ghost", headers=st.api.auth)
    assert r.status_code == 404, r.text  # nothing written

    prices = [
        {"kind": "flat", "key": "base", "name": "Base", "amount": "10"},
        {"kind": "flat", "key": "wine", "name": "Wine", "amount": "5", "tax_rates": ["luxury"]},
    ]
    plan = {"key": "resto", "name": "Resto", "currency": "EUR", "interval": "month",
            "prices": prices}  # fmt: skip
    error = await refused(st, "POST", "/v1/plans", plan)
    assert (error["code"], error["field"]) == ("not_found", "prices[1].tax_rates[0]"), error
    error = await refused(st, "POST", "/v1/plans", plan | {"prices": prices[:1],
                                                           "tax_rates": ["nope"]})  # fmt: skip
    assert (error["code"], error["field"]) == ("not_found", "tax_rates[0]"), error
    assert await st.api.get("/v1/plans") == []

    error = await refused(st, "PUT", "/v1/invoicing/config", {"tax_rates": ["gst"]})
    assert (error["code"], error["field"]) == ("not_found", "tax_rates[0]"), error
    assert (await st.api.get("/v1/invoicing/config"))["tax_rates"] == []
    # an existing name is accepted everywhere
    await st.api.ok("PUT", "/v1/invoicing/config", {"tax_rates": ["vat-de"]})
    assert (await st.api.get("/v1/invoicing/config"))["tax_rates"] == ["vat-de"]

    # a float on a customer's bare rate is refused at the door
    bare = {"external_id": "float", "name": "Float", "currency": "EUR", "tax_rate": 0.19}
    assert await invalid(st, "POST", "/v1/customers", bare) == ["tax_rate"]


async def test_rates_of_one_tenant_are_invisible_to_another(
    invoicing: Stack, sessions: Sessions
) -> None:
    st = invoicing
    await st.api.ok("POST", "/v1/tax_rates", rate("vat-de", "19", id="vat-de"))
    globex = Client(st.http, await make_tenant(sessions, "globex"))
    r = await globex.http.get("/v1/tax_rates/vat-de", headers=globex.auth)
    assert r.status_code == 404, r.text
    assert await globex.get("/v1/tax_rates") == []
    # the same id and name, another rate: no conflict with acme's
    await globex.ok("POST", "/v1/tax_rates", rate("vat-de", "7", id="vat-de", inclusive=True))
    assert [(v["percentage"], v["inclusive"]) for v in await globex.get("/v1/tax_rates")] == [
        ("7", True)
    ]
    assert (await st.api.get("/v1/tax_rates/vat-de"))["percentage"] == "19"
