"""Pure payments logic: Stripe amounts, the dunning schedule, forward-only states,
secrets at rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from workers.payments import secrets, service
from workers.payments.errors import SecretsKeyMissing
from workers.payments.service import AmountNotCollectable
from workers.settings import Settings


@pytest.mark.parametrize(
    ("amount", "currency", "stripe"),
    [
        (12_345, "USD", 12_345),  # two decimals both sides
        (5_000, "JPY", 5_000),  # zero-decimal both sides
        (1_230, "KWD", 1_230),  # three decimals; the last must be 0
        (150, "ISK", 15_000),  # ISO 0 decimals, Stripe wants two (zero) decimals
        (500, "CLP", 500),
    ],
)
def test_amounts_follow_stripes_currency_rules(amount: int, currency: str, stripe: int) -> None:
    assert service.to_stripe_amount(amount, currency) == stripe
    assert service.from_stripe_amount(stripe, currency) == amount


def test_three_decimal_amounts_stripe_cannot_charge_are_refused_not_rounded() -> None:
    with pytest.raises(AmountNotCollectable):
        service.to_stripe_amount(1_235, "BHD")


def test_idempotency_key_names_the_invoice_and_attempt() -> None:
    assert service.idempotency_key("inv-1", 2) == "inv_inv-1_attempt_2"


def test_dunning_retries_3_5_7_days_after_each_failure_then_stops() -> None:
    t = datetime(2031, 1, 1, tzinfo=UTC)
    schedule = [3.0, 5.0, 7.0]
    assert service.next_attempt(t, 1, schedule) == t + timedelta(days=3)
    assert service.next_attempt(t, 2, schedule) == t + timedelta(days=5)
    assert service.next_attempt(t, 3, schedule) == t + timedelta(days=7)
    assert service.next_attempt(t, 4, schedule) is None
    assert service.next_attempt(t, 1, []) is None


@pytest.mark.parametrize(
    ("current", "new", "moves"),
    [
        ("creating", "processing", True),
        ("creating", "succeeded", True),
        ("creating", "failed", True),
        ("processing", "succeeded", True),
        ("processing", "creating", False),
        ("succeeded", "failed", False),  # a late payment_failed after success
        ("failed", "succeeded", False),  # each attempt is its own PaymentIntent
        ("succeeded", "succeeded", False),  # a repeated event
    ],
)
def test_payment_states_never_move_backwards(current: str, new: str, moves: bool) -> None:
    assert service.advances(current, new) is moves


def test_intent_outcomes() -> None:
    ok = service.outcome_of_intent(
        {"id": "pi_1", "status": "succeeded", "latest_charge": {"id": "ch_1"}}
    )
    assert (ok.state, ok.payment_intent, ok.charge) == ("succeeded", "pi_1", "ch_1")
    declined = service.outcome_of_intent(
        {
            "id": "pi_2",
            "status": "requires_payment_method",
            "latest_charge": "ch_2",
            "last_payment_error": {"code": "card_declined", "message": "Declined."},
        }
    )
    assert (declined.state, declined.failure_code, declined.charge) == (
        "failed",
        "card_declined",
        "ch_2",
    )
    sca = service.outcome_of_intent({"id": "pi_3", "status": "requires_action"})
    assert (sca.state, sca.failure_code) == ("failed", "authentication_required")
    assert service.outcome_of_intent({"id": "pi_4", "status": "processing"}).state == "processing"


def test_secrets_are_encrypted_and_keys_rotate() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before = Settings(secrets_key=SecretStr(old))
    token = secrets.encrypt(before, "sk_test_123")
    assert token.startswith("enc:") and "sk_test_123" not in token
    assert secrets.decrypt(before, token) == "sk_test_123"
    rotated = Settings(secrets_key=SecretStr(f"{new},{old}"))
    assert secrets.decrypt(rotated, token) == "sk_test_123"  # old ciphertexts still read
    fresh = secrets.encrypt(rotated, "sk_test_123")
    assert secrets.decrypt(Settings(secrets_key=SecretStr(new)), fresh) == "sk_test_123"
    with pytest.raises(SecretsKeyMissing):
        secrets.decrypt(Settings(secrets_key=SecretStr(new)), token)
    with pytest.raises(SecretsKeyMissing):
        secrets.encrypt(Settings(secrets_key=None), "sk_test_123")
    assert "sk_test" not in repr(rotated) and old not in repr(rotated)


def _collection_and_payment(state: str = "creating") -> tuple[Any, Any]:
    c = SimpleNamespace(
        tenant_id="acme", invoice_id="inv-1", customer="alice", amount=500, currency="USD",
        status="in_flight", attempts=1, correlationid=None,
    )  # fmt: skip
    p = SimpleNamespace(
        tenant_id="acme", id="pay_1", invoice_id="inv-1", customer="alice", amount=500,
        currency="USD", method="card", attempt=1, state=state, amount_refunded=0,
        disputed=False,
    )  # fmt: skip
    return c, p


NOW = datetime(2031, 1, 1, tzinfo=UTC)


def test_settle_success_emits_payment_succeeded_once() -> None:
    c, p = _collection_and_payment()
    ok = service.Outcome("succeeded", "pi_1", "ch_1")
    first = service.settle(c, p, ok, NOW, [3.0])
    assert first is not None
    assert [e.type for e in first.events] == ["payment.succeeded"]
    assert (first.collection_status, first.payment_state) == ("succeeded", "succeeded")
    assert service.key_of(first.events[0]) == "acme:alice"
    p.state = "succeeded"
    assert service.settle(c, p, ok, NOW, [3.0]) is None  # repeated: nothing
    late_failure = service.Outcome("failed", "pi_1", "ch_1", "card_declined")
    assert service.settle(c, p, late_failure, NOW, [3.0]) is None  # out of order: nothing


def test_settle_failure_schedules_the_retry_then_exhausts() -> None:
    c, p = _collection_and_payment()
    declined = service.Outcome("failed", "pi_1", "ch_1", "card_declined", "Declined.")
    out = service.settle(c, p, declined, NOW, [3.0])
    assert out is not None
    assert [e.type for e in out.events] == ["payment.failed"]
    assert (out.collection_status, out.next_attempt_at) == ("due", NOW + timedelta(days=3))
    assert (out.payment_state, out.failure_code) == ("failed", "card_declined")
    c2, p2 = _collection_and_payment()
    c2.attempts = 2  # the last attempt of a [3.0] schedule
    out = service.settle(c2, p2, declined, NOW, [3.0])
    assert out is not None
    assert [e.type for e in out.events] == ["payment.failed", "payment.dunning_exhausted"]
    assert (out.collection_status, out.next_attempt_at) == ("exhausted", None)
