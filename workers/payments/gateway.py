"""Stripe, through the official SDK (async, httpx). The only module that talks to Stripe:
``Gateway`` is one Stripe account's client, ``Gateways`` keeps one per account for a job and
closes them when the job stops.

Every call runs outside any database transaction. Errors become ``StripeRejected``
(permanent: a decline, an unknown object) or ``StripeUnavailable`` (retry later).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import stripe

from workers.payments.errors import StripeRejected, StripeUnavailable
from workers.payments.service import Outcome, idempotency_key, outcome_of_intent

META_TENANT = "billstream_tenant"
META_INVOICE = "billstream_invoice"
META_ATTEMPT = "billstream_attempt"
META_PAYMENT = "billstream_payment"
META_CUSTOMER = "billstream_customer"


def _plain(obj: Any) -> dict[str, Any]:
    value = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    assert isinstance(value, dict)
    return value


class Gateway:
    """One tenant's Stripe account."""

    def __init__(self, secret_key: str, api_base: str | None) -> None:
        self.http = stripe.AIOHTTPClient()
        self.client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=self.http,
            max_network_retries=2,
        )

    async def close(self) -> None:
        await self.http.close_async()  # type: ignore[no-untyped-call]

    @staticmethod
    def _translate(e: stripe.StripeError) -> Exception:
        if isinstance(e, stripe.APIConnectionError | stripe.RateLimitError) or (
            e.http_status is not None and e.http_status >= 500
        ):
            return StripeUnavailable(f"Stripe unavailable: {type(e).__name__}")
        return StripeRejected(e.user_message or type(e).__name__, code=e.code or "stripe_rejected")

    async def create_customer(
        self, tenant: str, customer: str, email: str | None, name: str | None
    ) -> str:
        params: dict[str, Any] = {"metadata": {META_TENANT: tenant, META_CUSTOMER: customer}}
        if email:
            params["email"] = email
        if name:
            params["name"] = name
        try:
            created = await self.client.v1.customers.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": f"cus_{tenant}_{customer}"},
            )
        except stripe.StripeError as e:
            raise self._translate(e) from None
        return str(created.id)

    async def find_customer(self, tenant: str, customer: str) -> str | None:
        """The Stripe customer created for ``customer`` before (a resumed sync)."""
        query = f"metadata['{META_CUSTOMER}']:'{customer}'"
        try:
            found = await self.client.v1.customers.search_async(params={"query": query})
            candidates = [_plain(c) for c in found.data]
        except stripe.InvalidRequestError:  # no search API (localstripe): scan
            candidates = []
            params: dict[str, Any] = {"limit": 100}
            while True:
                page = await self.client.v1.customers.list_async(params=params)  # type: ignore[arg-type]
                candidates.extend(_plain(c) for c in page.data)
                if not page.has_more or not page.data:
                    break
                params["starting_after"] = page.data[-1].id
        except stripe.StripeError as e:
            raise self._translate(e) from None
        for c in candidates:
            meta = c.get("metadata") or {}
            if meta.get(META_TENANT) == tenant and meta.get(META_CUSTOMER) == customer:
                return str(c["id"])
        return None

    async def find_refund(self, payment_intent: str, refund_id: str) -> str | None:
        """The Stripe refund made for our ``refund_id`` before (a resumed refund)."""
        try:
            page = await self.client.v1.refunds.list_async(
                params={"payment_intent": payment_intent, "limit": 100}
            )
        except stripe.StripeError as e:
            raise self._translate(e) from None
        for r in page.data:
            if (_plain(r).get("metadata") or {}).get("billstream_refund") == refund_id:
                return str(r.id)
        return None

    async def attach(self, payment_method: str, stripe_customer: str) -> None:
        try:
            await self.client.v1.payment_methods.attach_async(
                payment_method, params={"customer": stripe_customer}
            )
            await self.client.v1.customers.update_async(
                stripe_customer,
                params={"invoice_settings": {"default_payment_method": payment_method}},
            )
        except stripe.StripeError as e:
            raise self._translate(e) from None

    async def setup_intent(self, stripe_customer: str | None, metadata: Mapping[str, str]) -> str:
        """A SetupIntent for collecting a card in the browser (Stripe.js
        ``confirmCardSetup``); its client secret."""
        params: dict[str, Any] = {
            "usage": "off_session",
            "payment_method_types": ["card"],
            "metadata": dict(metadata),
        }
        if stripe_customer:
            params["customer"] = stripe_customer
        try:
            intent = await self.client.v1.setup_intents.create_async(params=params)  # type: ignore[arg-type]
        except stripe.StripeError as e:
            raise self._translate(e) from None
        return str(intent.client_secret)

    async def find_intent(
        self, tenant: str, invoice_id: str, attempt: int
    ) -> dict[str, Any] | None:
        """The PaymentIntent of this attempt, if one was created. Stripe's search API first;
        where it does not exist (localstripe) a scan of the account's PaymentIntents."""
        query = f"metadata['{META_INVOICE}']:'{invoice_id}'"
        try:
            found = await self.client.v1.payment_intents.search_async(
                params={"query": query, "limit": 100}
            )
            candidates = [_plain(pi) for pi in found.data]
        except stripe.InvalidRequestError:
            candidates = await self._scan(invoice_id)
        except stripe.StripeError as e:
            raise self._translate(e) from None
        for pi in candidates:
            meta = pi.get("metadata") or {}
            if (
                meta.get(META_TENANT) == tenant
                and meta.get(META_INVOICE) == invoice_id
                and meta.get(META_ATTEMPT) == str(attempt)
            ):
                return pi
        return None

    async def _scan(self, invoice_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        try:
            while True:
                page = await self.client.v1.payment_intents.list_async(params=params)  # type: ignore[arg-type]
                for pi in page.data:
                    plain = _plain(pi)
                    if (plain.get("metadata") or {}).get(META_INVOICE) == invoice_id:
                        out.append(plain)
                if not page.has_more or not page.data:
                    return out
                params["starting_after"] = page.data[-1].id
        except stripe.StripeError as e:
            raise self._translate(e) from None

    async def list_intents(self) -> list[dict[str, Any]]:
        """Every PaymentIntent of the account (tests and reconciliation tooling)."""
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = await self.client.v1.payment_intents.list_async(params=params)  # type: ignore[arg-type]
            out.extend(_plain(pi) for pi in page.data)
            if not page.has_more or not page.data:
                return out
            params["starting_after"] = page.data[-1].id

    async def charge(
        self,
        *,
        tenant: str,
        invoice_id: str,
        attempt: int,
        payment_id: str,
        amount: int,
        currency: str,
        stripe_customer: str,
        payment_method: str | None,
    ) -> Outcome:
        """Create and confirm an off-session PaymentIntent for this attempt."""
        metadata: Mapping[str, str] = {
            META_TENANT: tenant,
            META_INVOICE: invoice_id,
            META_ATTEMPT: str(attempt),
            META_PAYMENT: payment_id,
        }
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency.lower(),
            "customer": stripe_customer,
            "confirm": True,
            "off_session": True,
            "metadata": dict(metadata),
        }
        if payment_method:
            params["payment_method"] = payment_method
        try:
            intent = await self.client.v1.payment_intents.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key(invoice_id, attempt)},
            )
        except stripe.CardError as e:
            # declined: the PaymentIntent exists (requires_payment_method); record it
            found = await self.find_intent(tenant, invoice_id, attempt)
            body: Any = e.json_body or {}
            error = body.get("error")
            charge = error.get("charge") if isinstance(error, dict) else None
            return Outcome(
                "failed",
                str(found["id"]) if found else None,
                str(charge) if charge else None,
                e.code or "card_declined",
                e.user_message,
            )
        except stripe.StripeError as e:
            raise self._translate(e) from None
        return outcome_of_intent(_plain(intent))

    async def refund(self, payment_intent: str, amount: int, refund_id: str) -> str:
        try:
            refund = await self.client.v1.refunds.create_async(
                params={
                    "payment_intent": payment_intent,
                    "amount": amount,
                    "metadata": {"billstream_refund": refund_id},
                },
                options={"idempotency_key": f"refund_{refund_id}"},
            )
        except stripe.StripeError as e:
            raise self._translate(e) from None
        return str(refund.id)


class Gateways:
    """The Stripe clients of one job, by secret key: made on first use, kept, and closed by
    ``close`` (the job's close, when the worker stops)."""

    def __init__(self, api_base: str | None) -> None:
        self.api_base = api_base
        self._by_key: dict[str, Gateway] = {}

    def for_key(self, secret_key: str) -> Gateway:
        gw = self._by_key.get(secret_key)
        if gw is None:
            gw = self._by_key[secret_key] = Gateway(secret_key, self.api_base)
        return gw

    async def close(self) -> None:
        gateways, self._by_key = list(self._by_key.values()), {}
        await asyncio.gather(*(g.close() for g in gateways), return_exceptions=True)
