"""Pure payments logic: the context's domain types (an attempt, a queued Stripe operation,
Stripe's outcome, a settlement), Stripe amounts, the dunning schedule, forward-only payment
states, idempotency keys, and every event the context emits. No I/O; unit-tested."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from schemas import topics
from schemas.currency import exponent
from schemas.envelope import CloudEvent, new_id
from schemas.payments import (
    DisputeData,
    DunningData,
    DunningExhausted,
    PaymentData,
    PaymentDisputed,
    PaymentFailed,
    PaymentFailureData,
    PaymentRefunded,
    PaymentSucceeded,
    RecordOfflinePayment,
    RefundData,
)

SOURCE = "billstream/payments"

# A payment's states move forward only: creating → processing → succeeded | failed.
PAYMENT_RANK = {"creating": 0, "processing": 1, "failed": 2, "succeeded": 3}
# a collection an offline payment can still settle
OPEN_COLLECTION = ("due", "awaiting", "in_flight")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Dunning:
    """When collection retries: ``schedule_days`` after each failed attempt, by ``clock``."""

    schedule_days: Sequence[float]
    clock: Clock = utcnow


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


# --- what the collection and the queued operations work on -------------------------------


@dataclass(frozen=True)
class Attempt:
    """One collection attempt of an invoice, leased to this worker."""

    tenant_id: str
    invoice_id: str
    customer: str
    amount: int
    currency: str
    attempt: int
    payment_id: str
    resumed: bool  # a lease ran out: look the PaymentIntent up before creating one
    correlationid: str | None


@dataclass(frozen=True)
class QueuedOperation:
    """A command that calls Stripe, leased to this worker (``resumed``: a lease ran out, so
    look for what the dead worker may have done in Stripe before doing it again)."""

    tenant_id: str
    id: str  # the command id
    type: str
    command: dict[str, Any]
    resumed: bool


def new_payment_id() -> str:
    return f"pay_{new_id()}"


class CollectionRow(Protocol):
    """What settling reads of a collection."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def invoice_id(self) -> str: ...
    @property
    def customer(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def currency(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def correlationid(self) -> str | None: ...


class PaymentRow(Protocol):
    """What settling and the payment events read of a payment."""

    @property
    def id(self) -> str: ...
    @property
    def invoice_id(self) -> str: ...
    @property
    def customer(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def currency(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def amount_refunded(self) -> int: ...


@dataclass(frozen=True)
class Settlement:
    """What an outcome does to a payment and its collection, and the events it emits."""

    payment_state: str
    collection_status: str
    next_attempt_at: datetime | None
    failed: bool = False  # record failure_code and failure_message on the payment
    failure_code: str | None = None
    failure_message: str | None = None
    events: list[CloudEvent] = field(default_factory=list)


def settle(
    c: CollectionRow,
    payment: PaymentRow,
    outcome: Outcome,
    now: datetime,
    schedule_days: Sequence[float],
) -> Settlement | None:
    """What ``outcome`` does to the payment and its collection, forward only; None when it
    changes nothing (a repeated or out-of-order outcome)."""
    if not advances(payment.state, outcome.state):
        return None
    envelope = {"tenantid": c.tenant_id, "correlationid": c.correlationid, "subject": c.invoice_id}
    if outcome.state == "processing":
        return Settlement("processing", "awaiting", None)
    if outcome.state == "succeeded":
        data = PaymentData(
            payment_id=payment.id,
            invoice_id=c.invoice_id,
            customer=c.customer,
            amount=payment.amount,
            currency=payment.currency,
            method=payment.method,
        )
        event = PaymentSucceeded(source=SOURCE, data=data, **envelope)
        return Settlement("succeeded", "succeeded", None, events=[event])
    retry_at = next_attempt(now, c.attempts, schedule_days)
    failed = PaymentFailed(
        source=SOURCE,
        data=PaymentFailureData(
            payment_id=payment.id,
            invoice_id=c.invoice_id,
            customer=c.customer,
            amount=payment.amount,
            currency=payment.currency,
            attempt=c.attempts,
            failure_code=outcome.failure_code,
            failure_message=outcome.failure_message,
            next_attempt_at=retry_at,
        ),
        **envelope,
    )
    events: list[CloudEvent] = [failed]
    if retry_at is None:
        exhausted = DunningExhausted(
            source=SOURCE,
            data=DunningData(
                invoice_id=c.invoice_id,
                customer=c.customer,
                amount=c.amount,
                currency=c.currency,
                attempts=c.attempts,
            ),
            **envelope,
        )
        events.append(exhausted)
    return Settlement(
        outcome.state,
        "due" if retry_at else "exhausted",
        retry_at,
        failed=True,
        failure_code=outcome.failure_code,
        failure_message=outcome.failure_message,
        events=events,
    )


def offline_settles(status: str, due: int, paid: int) -> bool:
    """Whether an offline payment of ``paid`` settles a collection in ``status``."""
    return status in OPEN_COLLECTION and paid >= due


# --- the events the context emits -----------------------------------------------------------


def key_of(event: CloudEvent) -> str:
    """The record key of a payments event: its tenant and customer."""
    return topics.partition_key(event.tenantid, event.data.customer)


def offline_payment_succeeded(cmd: RecordOfflinePayment) -> PaymentSucceeded:
    d = cmd.data
    return PaymentSucceeded(
        source=SOURCE,
        subject=d.invoice_id,
        data=PaymentData(
            payment_id=d.payment_id,
            invoice_id=d.invoice_id,
            customer=d.customer,
            amount=d.amount,
            currency=d.currency,
            method=d.method,
        ),
        **cmd.caused(),
    )


def payment_refunded(
    payment: PaymentRow, refund_id: str, amount: int, cause: CloudEvent
) -> PaymentRefunded:
    """``amount`` of ``payment`` refunded (its ``amount_refunded`` already counts it)."""
    return PaymentRefunded(
        source=SOURCE,
        subject=payment.invoice_id,
        data=RefundData(
            refund_id=refund_id,
            payment_id=payment.id,
            invoice_id=payment.invoice_id,
            customer=payment.customer,
            amount=amount,
            amount_refunded=payment.amount_refunded,
            currency=payment.currency,
        ),
        **cause.caused(),
    )


def payment_disputed(
    payment: PaymentRow, dispute: dict[str, Any], cause: CloudEvent
) -> PaymentDisputed:
    """``payment`` disputed, from Stripe's dispute object."""
    return PaymentDisputed(
        source=SOURCE,
        subject=payment.invoice_id,
        data=DisputeData(
            dispute_id=str(dispute.get("id", "")),
            payment_id=payment.id,
            invoice_id=payment.invoice_id,
            customer=payment.customer,
            amount=from_stripe_amount(int(dispute.get("amount", 0)), payment.currency),
            currency=payment.currency,
            reason=dispute.get("reason"),
        ),
        **cause.caused(),
    )


def stripe_refund(charge: dict[str, Any], currency: str) -> tuple[str, int]:
    """A ``charge.refunded`` charge object: the id of its latest refund (or one made of the
    charge and the total) and the total refunded, in our minor units."""
    total = from_stripe_amount(int(charge.get("amount_refunded", 0)), currency)
    refunds = (charge.get("refunds") or {}).get("data") or []
    refund_id = str(refunds[0]["id"]) if refunds else f"{charge.get('id')}:{total}"
    return refund_id, total
