"""Payments: per-tenant Stripe accounts (secrets encrypted), the customer mapping, one
collection per invoice (its dunning schedule), payments (one row per Stripe attempt, plus
offline payments), refunds, and the Stripe event ids the ingress has accepted.

A payment row is written (state ``creating``) before Stripe is called and the collection
is leased (``in_flight`` until ``next_attempt_at``); a lease that runs out means a worker
died between the Stripe call and its commit, and whoever takes the row over looks the
PaymentIntent up before creating another. Claims use ``FOR UPDATE SKIP LOCKED``.
"""

from storage.payments.models import (
    Collection,
    Operation,
    Payment,
    Refund,
    StripeAccount,
    StripeCustomer,
    StripeEventSeen,
)
from storage.payments.repository import PaymentsRepository

__all__ = [
    "Collection",
    "Operation",
    "Payment",
    "PaymentsRepository",
    "Refund",
    "StripeAccount",
    "StripeCustomer",
    "StripeEventSeen",
]
