"""Pure payments logic: Stripe amounts, the dunning schedule, forward-only payment states
and idempotency keys. No I/O; unit-tested."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.currency import exponent
from storage.payments import PAYMENT_RANK

SOURCE = "billstream/payments"

# https://docs.stripe.com/currencies#zero-decimal
ZERO_DECIMAL = frozenset(
    [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
)
# https://docs.stripe.com/currencies#three-decimal: three decimals, the last one must be 0
THREE_DECIMAL = frozenset(["BHD", "JOD", "KWD", "OMR", "TND"])
# https://docs.stripe.com/currencies#special-cases: ISK is sent with two (zero) decimals
TWO_DECIMAL_SPECIAL = frozenset({"ISK"})


class AmountNotCollectable(ValueError):
    """Stripe cannot represent this amount in this currency."""


def stripe_exponent(currency: str) -> int:
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def to_stripe_amount(amount: int, currency: str) -> int:
    """Our minor units (ISO 4217 exponent) → Stripe's ``amount`` for ``currency``."""
    ours, theirs = exponent(currency), stripe_exponent(currency)
    value: int | None = amount * 10 ** (theirs - ours) if theirs >= ours else None
    if value is None:
        scale = 10 ** (ours - theirs)
        if amount % scale:
            raise AmountNotCollectable(
                f"{amount} minor units of {currency} are not a whole Stripe amount"
            )
        value = int(amount // scale)
    if currency in THREE_DECIMAL and value % 10:
        raise AmountNotCollectable(
            f"Stripe charges {currency} only in multiples of 10 (the last decimal must be 0)"
        )
    return value


def from_stripe_amount(value: int, currency: str) -> int:
    """Stripe's ``amount`` → our minor units."""
    ours, theirs = exponent(currency), stripe_exponent(currency)
    if ours >= theirs:
        return int(value * 10 ** (ours - theirs))
    return int(value // 10 ** (theirs - ours))


def idempotency_key(invoice_id: str, attempt: int) -> str:
    return f"inv_{invoice_id}_attempt_{attempt}"


def next_attempt(
    failed_at: datetime, attempts: int, schedule_days: Sequence[float]
) -> datetime | None:
    """When to retry after attempt number ``attempts`` failed; None once the schedule is
    spent (attempt 1 is the collection on finalization, then one per schedule entry)."""
    if attempts - 1 >= len(schedule_days):
        return None
    return failed_at + timedelta(days=schedule_days[attempts - 1])


def advances(current: str, new: str) -> bool:
    """Whether a payment in state ``current`` may move to ``new`` (never backwards)."""
    if current in ("succeeded", "failed"):
        return False  # terminal: a late or repeated Stripe event changes nothing
    return PAYMENT_RANK[new] > PAYMENT_RANK[current]


@dataclass(frozen=True)
class Outcome:
    """What Stripe said about one attempt."""

    state: str  # processing | succeeded | failed
    payment_intent: str | None
    charge: str | None
    failure_code: str | None = None
    failure_message: str | None = None


def outcome_of_intent(intent: dict[str, object]) -> Outcome:
    """Map a PaymentIntent (as a dict) to our states."""
    status = str(intent.get("status"))
    pi = str(intent["id"]) if intent.get("id") else None
    charge = intent.get("latest_charge")
    charge_id = str(charge["id"]) if isinstance(charge, dict) else (str(charge) if charge else None)
    if status == "succeeded":
        return Outcome("succeeded", pi, charge_id)
    if status in ("processing", "requires_capture"):
        return Outcome("processing", pi, charge_id)
    error = intent.get("last_payment_error")
    code = message = None
    if isinstance(error, dict):
        code = str(error.get("decline_code") or error.get("code") or "") or None
        message = str(error.get("message") or "") or None
    if status == "requires_action":
        code = code or "authentication_required"
        message = message or "the payment needs the customer's authentication"
    return Outcome("failed", pi, charge_id, code or "payment_failed", message)
