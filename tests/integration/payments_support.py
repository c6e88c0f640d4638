"""Payments test support: a real localstripe per test, a settable clock, finalized invoices
published to the invoicing topic, and reading the payments topic.

localstripe pickles its whole store to /tmp/localstripe.pickle after every write (shared
by every instance on the machine); the launcher turns that off and starts it from scratch.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet
from pydantic import SecretStr

from schemas import topics
from schemas.invoicing import InvoiceData, InvoiceFinalized
from tests.integration.support import producer, read_all, send_raw
from workers.devstack import free_port, wait_for
from workers.settings import Settings

LAUNCH = (
    "import sys; import localstripe.resources as r; "
    "r.Store.dump_to_disk = lambda self: None; "
    "from localstripe.server import start; "
    "sys.argv = ['localstripe', '--port', sys.argv[1], '--from-scratch']; start()"
)
SECRET_KEY = "sk_test_billstream0123456789"
WEBHOOK_SECRET = "whsec_billstreamtests0123456789"
CARD_OK = "4242424242424242"
CARD_DECLINED_ON_CHARGE = "4000000000000341"  # attaches, then every charge is declined
CARD_DECLINED = "4000000000000002"  # declined: localstripe (like Stripe) refuses to attach it


@contextlib.contextmanager
def localstripe(log_path: Path) -> Iterator[str]:
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(port)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.2),
                ):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"localstripe did not start: {log_path.read_text()}")
                time.sleep(0.05)  # start-up poll of a subprocess's port, not a test wait
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def payments_settings(settings: Settings, stripe_base: str, **update: Any) -> Settings:
    return settings.model_copy(
        update={
            "secrets_key": SecretStr(Fernet.generate_key().decode()),
            "stripe_api_base": stripe_base,
            "payments_tick_s": 0.05,
            **update,
        }
    )


@dataclass
class Clock:
    """A clock the test moves (dunning waits days)."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def finalized(
    tenant: str, invoice_id: str, customer: str, amount: int, currency: str = "USD"
) -> InvoiceFinalized:
    now = datetime.now(UTC)
    data = InvoiceData(
        invoice_id=invoice_id,
        number=f"INV-{invoice_id}",
        status="finalized",
        customer=customer,
        subscription_id="sub-1",
        currency=currency,
        period_start=now - timedelta(days=30),
        period_end=now,
        subtotal=amount,
        tax=0,
        total=amount,
        amount_paid=0,
        amount_due=amount,
        tax_rate=Decimal("0"),  # not None: to_json() drops None, and the field is required
        due_at=now + timedelta(days=14),
        lines=[],
    )
    return InvoiceFinalized(source="tests", tenantid=tenant, subject=invoice_id, data=data)


async def publish_invoices(settings: Settings, events: list[InvoiceFinalized]) -> None:
    async with producer(settings) as p:
        for e in events:
            key = topics.partition_key(e.tenantid, e.data.customer).encode()
            await send_raw(p, topics.EVENTS_INVOICING, e.to_json(), key=key)


async def payment_events(settings: Settings) -> list[dict[str, Any]]:
    records = (await read_all(settings, topics.EVENTS_PAYMENTS))[0]
    return [json.loads(r.value) for r in records]


async def wait_events(
    settings: Settings, predicate: Any, count: int = 1, timeout_s: float = 20
) -> list[dict[str, Any]]:
    """Wait until ``count`` payment events match ``predicate``; return the matches."""

    async def enough() -> list[dict[str, Any]] | None:
        matches = [e for e in await payment_events(settings) if predicate(e)]
        return matches if len(matches) >= count else None

    found: list[dict[str, Any]] = await wait_for(enough, timeout_s=timeout_s, interval_s=0.1)
    return found


async def card(stripe_base: str, number: str) -> str:
    """A PaymentMethod made the way a browser would (Stripe.js), outside billstream."""
    async with httpx.AsyncClient(base_url=stripe_base) as http:
        r = await http.post(
            "/v1/payment_methods",
            data={
                "type": "card",
                "card[number]": number,
                "card[exp_month]": "12",
                "card[exp_year]": "2034",
                "card[cvc]": "123",
            },
            auth=(SECRET_KEY, ""),
        )
        r.raise_for_status()
        pm: str = r.json()["id"]
        return pm


async def intents(stripe_base: str) -> list[dict[str, Any]]:
    """Every PaymentIntent localstripe holds."""
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    async with httpx.AsyncClient(base_url=stripe_base) as http:
        while True:
            r = await http.get("/v1/payment_intents", params=params, auth=(SECRET_KEY, ""))
            r.raise_for_status()
            page = r.json()
            out.extend(page["data"])
            if not page["has_more"] or not page["data"]:
                return out
            params["starting_after"] = page["data"][-1]["id"]


async def send_webhooks_to(stripe_base: str, url: str) -> None:
    """Make localstripe deliver its events, signed, to ``url`` (our ingress)."""
    async with httpx.AsyncClient(base_url=stripe_base) as http:
        r = await http.post(
            "/_config/webhooks/billstream", data={"url": url, "secret": WEBHOOK_SECRET}
        )
        r.raise_for_status()


async def seed_invoice(
    sessions: Any, tenant: str, invoice_id: str, customer: str, amount: int
) -> None:
    """A finalized invoice in invoicing's tables (as a billing run leaves it), straight
    into PostgreSQL; the test then publishes its ``invoice.finalized``."""
    from sqlalchemy import insert

    from schemas.envelope import new_id
    from storage.invoicing import Customer, Invoice, Plan, Subscription
    from tests.integration.billing_seed import PLAN

    now = datetime.now(UTC)
    customer_id, plan_id = new_id(), new_id()
    async with sessions() as session, session.begin():
        await session.execute(
            insert(Customer).values(
                id=customer_id, tenant_id=tenant, external_id=customer, name=customer,
                currency="USD", tax_exempt=True, net_terms_days=14,
            )
        )  # fmt: skip
        await session.execute(
            insert(Plan).values(
                id=plan_id, tenant_id=tenant, key=f"plan-{invoice_id}", currency="USD",
                interval="month", spec=PLAN.model_dump(mode="json"),
            )
        )  # fmt: skip
        await session.execute(
            insert(Subscription).values(
                tenant_id=tenant, id=f"sub-{invoice_id}", customer_id=customer_id,
                plan_id=plan_id, status="ended", start=now - timedelta(days=30),
                anchor=now - timedelta(days=30), period_index=0,
                current_period_start=now - timedelta(days=30), current_period_end=now,
                cancel_at_period_end=False, ended_at=now,
            )
        )  # fmt: skip
        await session.execute(
            insert(Invoice).values(
                id=invoice_id, tenant_id=tenant, customer_id=customer_id,
                subscription_id=f"sub-{invoice_id}", plan_id=plan_id, status="finalized",
                number=f"INV-{invoice_id}", currency="USD", period_start=now - timedelta(days=30),
                period_end=now, proration=Decimal(1), subtotal=amount, tax=0, total=amount,
                amount_paid=0, tax_rate=Decimal(0), rounding="half_even", finalize_after=now,
                due_at=now + timedelta(days=14), finalized_at=now,
            )
        )  # fmt: skip
