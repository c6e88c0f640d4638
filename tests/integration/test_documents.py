"""Invoice documents from the real broker and PostgreSQL, through the real ingress: every
finalized invoice is rendered once to a PDF, stored by its SHA-256 and announced once by
``document.rendered``; the PDF is served with its ETag; branding applies to invoices
finalized after it; hosted links and portal sessions are signed and verify; a replay or a
second replica renders nothing twice; another tenant sees nothing."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import zlib
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pypdf import PdfReader
from sqlalchemy import func, select

from schemas import groups, topics
from storage.documents import DocumentBlob, InvoiceDocument
from tests.conftest import TenantKey, make_tenant
from tests.integration.receipts_support import invoice_finalized, with_secrets
from tests.integration.support import (
    Sessions,
    producer,
    read_all,
    read_topic,
    running,
    wait_committed_to_end,
)
from tests.integration.test_invoicing import Stack, stack
from tests.integration.test_one_off import USD_LINES, create, customer, outcome
from workers.devstack import wait_for
from workers.documents import SecretsKeyMissing, link_keys, verify
from workers.documents.app import build
from workers.invoicing.app import build as build_invoicing
from workers.settings import Settings


def png(width: int, height: int) -> bytes:
    """A valid PNG of one colour (8-bit greyscale)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + b"\x80" * width for _ in range(height)))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG = base64.b64encode(png(4, 4)).decode()


def keys(settings: Settings) -> list[bytes]:
    assert settings.secrets_key is not None
    return link_keys(settings.secrets_key.get_secret_value())


def token(url: str) -> str:
    return url.rsplit("/", 1)[1]


def text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


async def rendered_events(settings: Settings) -> list[dict[str, Any]]:
    records, _ = await read_all(settings, topics.EVENTS_DOCUMENTS)
    return [json.loads(r.value or b"") for r in records]


async def pdf(st: Stack, invoice_id: str) -> httpx.Response:
    """The invoice's PDF, once rendered (503 ``document_pending`` until then)."""

    async def ready() -> httpx.Response | None:
        r = await st.api.http.get(f"/v1/invoices/{invoice_id}/pdf", headers=st.api.auth)
        if r.status_code == 503:
            assert r.json()["type"] == "urn:billstream:problem:document_pending", r.text
            assert r.headers["retry-after"] == "1"
            return None
        return r

    response: httpx.Response = await wait_for(ready, timeout_s=30)
    return response


async def finalized(st: Stack, customer_id: str) -> dict[str, Any]:
    accepted = await create(st, {"customer": customer_id, "lines": USD_LINES, "finalize": True})
    assert (await outcome(st, accepted))["status"] == "succeeded"
    invoice: dict[str, Any] = await st.api.get(f"/v1/invoices/{accepted['invoice_id']}")
    return invoice


async def document_rows(sessions: Sessions, tenant: str) -> tuple[int, int]:
    async with sessions() as db:
        docs = await db.scalar(select(func.count()).where(InvoiceDocument.tenant_id == tenant))
        blobs = await db.scalar(select(func.count()).where(DocumentBlob.tenant_id == tenant))
    return docs or 0, blobs or 0


async def test_a_finalized_invoice_is_rendered_once_served_with_its_etag_and_linked(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    s = with_secrets(settings.model_copy(update={"invoicing_tick_s": 0.1}))
    t = tenant.tenant_id
    async with stack(s, tenant, build_invoicing(s), build(s)) as st:
        await customer(st, "bistro", "USD", tax_rate="0.19")
        inv = await finalized(st, "bistro")
        assert inv["pdf_url"] == f"/v1/invoices/{inv['invoice_id']}/pdf"

        r = await pdf(st, inv["invoice_id"])
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/pdf"
        assert r.headers["content-disposition"] == f'inline; filename="{inv["number"]}.pdf"'
        assert r.headers["cache-control"].startswith("private, max-age=")
        sha = hashlib.sha256(r.content).hexdigest()
        assert r.headers["etag"] == f'"{sha}"'
        # USD total by hand (test_one_off.py): 73721 + 11597 = 85318 cents
        words = text(r.content)
        assert inv["number"] in words
        assert "$853.18" in words
        assert "acme" in words  # no branding yet: the tenant's name is the seller's

        # the same bytes again, or 304 to a client that has them
        again = await st.api.http.get(inv["pdf_url"], headers=st.api.auth)
        assert again.content == r.content
        cached = await st.api.http.get(
            inv["pdf_url"], headers=st.api.auth | {"If-None-Match": f'"{sha}"'}
        )
        assert cached.status_code == 304 and cached.headers["etag"] == f'"{sha}"'
        assert not cached.content

        # one document.rendered, saying where the PDF is and what it is
        events = await rendered_events(s)
        assert [e["type"] for e in events] == ["document.rendered"]
        data = events[0]["data"]
        assert (data["invoice_id"], data["number"], data["customer"]) == (
            inv["invoice_id"], inv["number"], "bistro",
        )  # fmt: skip
        assert (data["sha256"], data["size"]) == (sha, len(r.content))
        assert data["pdf_url"] == inv["pdf_url"] and data["locale"] == "en"
        link = verify(keys(s), token(data["hosted_url"]), "invoice", datetime.now(UTC))
        assert (link.tenant_id, link.subject, link.locale) == (t, inv["invoice_id"], "en")
        assert link.expires_at == datetime.fromisoformat(data["hosted_url_expires_at"])
        assert (link.expires_at - datetime.fromisoformat(data["rendered_at"])).days in (89, 90)

        # another tenant's key: no such invoice
        other = await make_tenant(sessions, "globex")
        foreign = await st.http.get(
            inv["pdf_url"], headers={"Authorization": f"Bearer {other.api_key}"}
        )
        assert foreign.status_code == 404, foreign.text
        assert foreign.headers["content-type"] == "application/problem+json"
        link_r = await st.http.post(
            f"/v1/invoices/{inv['invoice_id']}/hosted-link",
            headers={"Authorization": f"Bearer {other.api_key}"},
        )
        assert link_r.status_code == 404

        # a draft has no PDF yet, nor a hosted page
        draft = await create(st, {"customer": "bistro", "lines": USD_LINES})
        assert (await outcome(st, draft))["result"]["status"] == "draft"
        r = await st.api.http.get(f"/v1/invoices/{draft['invoice_id']}/pdf", headers=st.api.auth)
        assert r.status_code == 409, r.text
        assert r.json()["type"] == "urn:billstream:problem:invoice_not_finalized"
        r = await st.api.send("POST", f"/v1/invoices/{draft['invoice_id']}/hosted-link", None)
        assert r.status_code == 409, r.text
        r = await st.api.http.get("/v1/invoices/in_nope/pdf", headers=st.api.auth)
        assert r.status_code == 404, r.text

        # a fresh hosted link, for as many days as asked
        r = await st.api.send(
            "POST", f"/v1/invoices/{inv['invoice_id']}/hosted-link", {"expires_in_days": 7}
        )
        assert r.status_code == 201, r.text
        hosted = r.json()
        link = verify(keys(s), token(hosted["url"]), "invoice", datetime.now(UTC))
        assert (link.tenant_id, link.subject) == (t, inv["invoice_id"])
        assert link.expires_at == datetime.fromisoformat(hosted["expires_at"])
        assert (link.expires_at - datetime.now(UTC)).days == 6  # 7 days less a moment

        # a portal session for one customer
        r = await st.api.send(
            "POST",
            "/v1/portal/sessions",
            {"customer": "bistro", "expires_in": 600, "return_url": "https://app.example/x"},
        )
        assert r.status_code == 201, r.text
        session = r.json()
        assert session["customer"] == "bistro"
        link = verify(keys(s), token(session["url"]), "portal", datetime.now(UTC))
        assert (link.tenant_id, link.subject, link.return_url) == (
            t, "bistro", "https://app.example/x",
        )  # fmt: skip
        assert link.expires_at == datetime.fromisoformat(session["expires_at"])
        r = await st.api.send("POST", "/v1/portal/sessions", {"customer": "nobody"})
        assert r.status_code == 404, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["customer"]

    async with sessions() as db:
        row = await db.get(InvoiceDocument, (t, inv["invoice_id"]))
    assert row is not None and row.sha256 == sha


async def test_branding_shows_on_invoices_finalized_after_it_never_on_earlier_ones(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    s = with_secrets(settings.model_copy(update={"invoicing_tick_s": 0.1}))
    async with stack(s, tenant, build_invoicing(s), build(s)) as st:
        await customer(st, "bistro", "USD", tax_rate="0.19")
        default = await st.api.get("/v1/branding")
        assert default["name"] == "acme" and default["logo"] is None  # the default: its name

        first = await finalized(st, "bistro")
        before = (await pdf(st, first["invoice_id"])).content

        bad = await st.api.send(
            "PUT",
            "/v1/branding",
            {"name": "Bistro Supply Co.", "logo": "data:image/gif;base64,R0lG"},
        )
        assert bad.status_code == 422, bad.text
        assert [e["field"] for e in bad.json()["errors"]] == ["logo"]
        assert "image/gif" in bad.json()["errors"][0]["reason"]
        huge = (
            "data:image/png;base64,"
            + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(256 * 1024)).decode()
        )
        bad = await st.api.send("PUT", "/v1/branding", {"name": "X", "logo": huge})
        assert bad.status_code == 422, bad.text
        assert [e["field"] for e in bad.json()["errors"]] == ["logo"]

        branding = {
            "name": "Bistro Supply Co.",
            "tax_id": "VAT DE123456789",
            "logo": f"data:image/png;base64,{PNG}",
            "accent_color": "#AA3300",
            "footer": "Thank you for your business",
        }
        result = await st.api.ok("PUT", "/v1/branding", branding)
        assert result["name"] == "Bistro Supply Co."
        current = await st.api.get("/v1/branding")
        assert {k: current[k] for k in branding} == branding

        second = await finalized(st, "bistro")
        after = text((await pdf(st, second["invoice_id"])).content)
        assert "Bistro Supply Co." in after and "VAT DE123456789" in after
        # the earlier PDF is the one its customer was handed: unchanged
        assert (await pdf(st, first["invoice_id"])).content == before
        assert "Bistro Supply Co." not in text(before)

        # a logo with a PNG's header and broken bytes: invoices still render, without it
        broken = base64.b64encode(png(4, 4)[:-20] + bytes(20)).decode()
        logo = f"data:image/png;base64,{broken}"
        await st.api.ok("PUT", "/v1/branding", branding | {"logo": logo})
        third = await finalized(st, "bistro")
        assert "Bistro Supply Co." in text((await pdf(st, third["invoice_id"])).content)


async def test_replays_and_replicas_render_nothing_twice_and_a_ghost_tenant_is_dead_lettered(
    settings: Settings, sessions: Sessions, tenant: TenantKey
) -> None:
    s = with_secrets(settings)
    t = tenant.tenant_id
    events = [
        invoice_finalized(t, "alice", "in1", 1000),
        invoice_finalized("ghost", "alice", "in1", 100),  # no such tenant
        invoice_finalized(t, "bob", "in2", 500),
    ]

    async def send() -> None:
        async with producer(s) as p:
            for e in events:
                key = topics.partition_key(e.tenantid, e.data.customer).encode()
                await p.send(topics.EVENTS_INVOICING, e.to_json(), key=key)
            await p.flush()

    await send()
    async with running(build(s)), running(build(s)):  # two replicas of one group
        await send()  # the same events again: a replay
        await wait_for(lambda: _have(sessions, t, 2), timeout_s=30)
        await wait_committed_to_end(s, groups.DOCUMENTS_INVOICES, topics.EVENTS_INVOICING, 30)
        dead = await read_topic(s, topics.dlq(topics.EVENTS_INVOICING), 2)
    assert {json.loads(r.value or b"")["tenantid"] for r in dead} == {"ghost"}
    assert await document_rows(sessions, t) == (2, 2)
    rendered = await read_topic(s, topics.EVENTS_DOCUMENTS, 2)
    assert sorted(json.loads(r.value or b"")["data"]["invoice_id"] for r in rendered) == [
        "in1", "in2",
    ]  # fmt: skip


async def _have(sessions: Sessions, tenant: str, n: int) -> bool:
    return (await document_rows(sessions, tenant))[0] == n


async def test_the_worker_refuses_to_start_without_a_secrets_key(settings: Settings) -> None:
    assert settings.secrets_key is None
    with pytest.raises(SecretsKeyMissing, match="BILLSTREAM_SECRETS_KEY"):
        await build(settings).start()


async def test_links_need_the_secrets_key(settings: Settings, tenant: TenantKey) -> None:
    assert settings.secrets_key is None
    async with stack(settings, tenant) as st:
        r = await st.api.send("POST", "/v1/portal/sessions", {"customer": "bistro"})
    assert r.status_code == 503, r.text
    assert r.json()["type"] == "urn:billstream:problem:secrets_key_missing"
    assert "BILLSTREAM_SECRETS_KEY" in r.json()["detail"]
