"""Page tests in a real browser: Debian's chromium (``/usr/bin/chromium``; ``.ci/run``
apt-gets it) driven through Playwright's async API (pytest-playwright's own fixtures are
synchronous and cannot run inside the asyncio tests' loop), against the real stack: the
embedded broker and PostgreSQL (tests/conftest.py), the ingress served by uvicorn on a free
port, the metering, invoicing, payments and documents workers in-process, and localstripe,
whose mock Stripe.js the pages load (``BILLSTREAM_STRIPE_JS_URL``).

``BILLSTREAM_SCREENSHOTS=docs/images`` makes the tests save the pictures docs/ shows.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TenantKey
from tests.integration.http import Client, ingress
from tests.integration.payments_support import (
    SECRET_KEY,
    WEBHOOK_SECRET,
    localstripe,
    payments_settings,
)
from tests.integration.support import running
from workers import documents
from workers.devstack import wait_for
from workers.documents.app import build as build_documents
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.payments.app import build as build_payments
from workers.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PUBLISHABLE_KEY = "pk_test_billstream0123456789"


CHROMIUM_INSTALLED = CHROMIUM.exists()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM_INSTALLED:
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.async_api")
    async with playwright.async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def stripe_base(tmp_path: Path) -> Iterator[str]:
    with localstripe(tmp_path / "localstripe.log") as base:
        yield base


def screenshots() -> Path | None:
    """Where to save the docs' screenshots (``BILLSTREAM_SCREENSHOTS``), if anywhere."""
    where = os.environ.get("BILLSTREAM_SCREENSHOTS")
    if not where:
        return None
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Stack:
    settings: Settings
    api: Client
    http: httpx.AsyncClient
    base: str
    stripe_base: str
    tenant: TenantKey

    def link(self, purpose: documents.Purpose, subject: str, expires_in: timedelta) -> str:
        """A link as the API hands them out: the path of a signed token."""
        assert self.settings.secrets_key is not None
        keys = documents.link_keys(self.settings.secrets_key.get_secret_value())
        at = datetime.now(UTC) + expires_in
        token = documents.sign(keys, documents.Link(purpose, self.tenant.tenant_id, subject, at))
        return documents.PATHS[purpose] + token


@contextlib.asynccontextmanager
async def stack(settings: Settings, tenant: TenantKey, stripe_base: str) -> AsyncIterator[Stack]:
    settings = payments_settings(
        settings,
        stripe_base,
        stripe_js_url=f"{stripe_base}/js.stripe.com/v3/",
        invoicing_tick_s=0.2,
    )
    async with (
        ingress(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=20) as http,
        running(build_metering(settings)),
        running(build_invoicing(settings)),
        running(build_payments(settings)),
        running(build_documents(settings)),
    ):
        api = Client(http, tenant)
        await api.ok(
            "PUT",
            "/v1/integrations/stripe",
            {
                "secret_key": SECRET_KEY,
                "webhook_secret": WEBHOOK_SECRET,
                "auto_collection": False,  # the customer pays on the page
                "publishable_key": PUBLISHABLE_KEY,
            },
        )
        yield Stack(settings, api, http, base, stripe_base, tenant)


async def invoices_of(s: Stack, customer: str, count: int = 1) -> list[dict[str, Any]]:
    """The customer's finalized (or later) invoices, once the scheduler has made ``count``."""

    async def ready() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = await s.api.get("/v1/invoices", customer=customer)
        done = [i for i in found if i["status"] != "draft"]
        return done if len(done) >= count else None

    result: list[dict[str, Any]] = await wait_for(ready, timeout_s=30)
    return result


async def rendered(s: Stack, invoice_id: str) -> bytes:
    """The invoice's PDF, once the documents worker has rendered it."""

    async def pdf() -> bytes | None:
        r = await s.http.get(f"/v1/invoices/{invoice_id}/pdf", headers=s.api.auth)
        return r.content if r.status_code == 200 else None

    content: bytes = await wait_for(pdf, timeout_s=30)
    return content
