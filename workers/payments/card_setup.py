"""Collecting a card in the customer's browser (the hosted invoice page and the portal):
a Stripe SetupIntent whose client secret Stripe.js confirms with the card the customer
typed (``confirmCardSetup``), which gives the ``pm_…`` the page then sends. The card
itself never reaches billstream."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.payments import secrets
from workers.payments.gateway import META_CUSTOMER, META_TENANT, Gateway
from workers.settings import Settings

if TYPE_CHECKING:
    from storage.payments import StripeAccount, StripeCustomer


async def card_setup(
    settings: Settings,
    account: StripeAccount,
    tenant_id: str,
    customer: str,
    mapping: StripeCustomer | None,
) -> str:
    """The client secret of a new SetupIntent in the tenant's Stripe account (for the
    customer's Stripe customer when it has one). Raises ``StripeRejected`` /
    ``StripeUnavailable`` (payments errors) and ``SecretsKeyMissing``."""
    gateway = Gateway(secrets.decrypt(settings, account.secret_key), settings.stripe_api_base)
    try:
        return await gateway.setup_intent(
            mapping.stripe_customer_id if mapping else None,
            {META_TENANT: tenant_id, META_CUSTOMER: customer},
        )
    finally:
        await gateway.close()
