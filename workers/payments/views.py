"""Payments rows → contracts: a tenant's Stripe settings as the API shows them (never a
secret), and the webhook path it gives Stripe."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:  # storage.payments imports this context's service: no import at run time
    from storage.payments import StripeAccount


def webhook_path(endpoint_token: str) -> str:
    """The ingress path a tenant gives Stripe for its webhooks."""
    return f"/v1/integrations/stripe/{endpoint_token}"


class StripeSettingsView(BaseModel):
    configured: bool
    auto_collection: bool | None = None
    webhook_path: str | None = Field(
        default=None, description="Give Stripe this path on the ingress's public URL"
    )
    publishable_key: str | None = Field(
        default=None, description="pk_…: what the hosted pages' card form uses (public)"
    )


def stripe_settings(account: StripeAccount | None) -> StripeSettingsView:
    """A tenant's Stripe settings, never a secret."""
    if account is None:
        return StripeSettingsView(configured=False)
    return StripeSettingsView(
        configured=True,
        auto_collection=account.auto_collection,
        webhook_path=webhook_path(account.endpoint_token),
        publishable_key=account.publishable_key,
    )
