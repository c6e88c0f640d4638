"""Payments errors."""

from __future__ import annotations

from workers.runtime.errors import PermanentError, RetryableError


class PaymentsError(PermanentError):
    """A payments command that cannot be applied (the command fails with this)."""


class NotConfigured(PaymentsError):
    code = "stripe_not_configured"


class NotFound(PaymentsError):
    code = "not_found"


class Conflict(PaymentsError):
    code = "conflict"


class StripeRejected(PaymentsError):
    """Stripe refused the request (a declined card, an unknown payment method)."""

    code = "stripe_rejected"


class StripeUnavailable(RetryableError):
    """Stripe could not be reached or answered 5xx/429: try again later."""


class SecretsKeyMissing(RuntimeError):
    """BILLSTREAM_SECRETS_KEY is not set: Stripe secrets cannot be stored or read."""


class SecretUnreadable(SecretsKeyMissing):
    """One tenant's stored Stripe secret cannot be decrypted with any configured key (it
    was saved under a key that was dropped): that tenant's data, not the worker's."""
