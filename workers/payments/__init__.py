"""The payments context: Stripe collection, verified Stripe webhooks, dunning, refunds.

Its face: what other packages may import (an import-linter contract enforces it): the API
views, Stripe secrets at rest, verifying a Stripe webhook's signature, and the errors
these raise."""

from workers.payments.card_setup import card_setup
from workers.payments.errors import (
    PaymentsError,
    SecretsKeyMissing,
    SecretUnreadable,
    StripeRejected,
    StripeUnavailable,
)
from workers.payments.receipt_views import (
    attested_payments,
    attested_refunds,
    succeeded_documents,
)
from workers.payments.secrets import decrypt as decrypt_secret
from workers.payments.secrets import encrypt as encrypt_secret
from workers.payments.secrets import webhook_secrets
from workers.payments.signature import SignatureError
from workers.payments.signature import verify as verify_stripe_signature
from workers.payments.views import StripeSettingsView, stripe_settings, webhook_path

__all__ = [
    "PaymentsError",
    "SecretUnreadable",
    "SecretsKeyMissing",
    "SignatureError",
    "StripeRejected",
    "StripeSettingsView",
    "StripeUnavailable",
    "attested_payments",
    "attested_refunds",
    "card_setup",
    "decrypt_secret",
    "encrypt_secret",
    "stripe_settings",
    "succeeded_documents",
    "verify_stripe_signature",
    "webhook_path",
    "webhook_secrets",
]
