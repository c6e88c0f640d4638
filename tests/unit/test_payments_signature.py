"""Stripe-Signature verification: valid, wrong secret, stale, tampered, rotated secrets;
checked against the official SDK's own verifier too."""

from __future__ import annotations

import json

import pytest
import stripe

from workers.payments.signature import SignatureError, header, sign, verify

SECRET = "whsec_current"
BODY = json.dumps({"id": "evt_1", "type": "payment_intent.succeeded"}).encode()
NOW = 1_900_000_000


def test_a_valid_signature_is_accepted_and_agrees_with_the_stripe_sdk() -> None:
    h = header(BODY, [SECRET], NOW)
    assert verify(BODY, h, [SECRET], now=NOW) == NOW
    stripe_header = f"t={NOW},v1={sign(BODY, SECRET, NOW)}"
    assert h == stripe_header
    # the official SDK verifies what we sign (with its own clock: no tolerance check)
    assert stripe.WebhookSignature.verify_header(BODY.decode(), h, SECRET, tolerance=None)


def test_a_wrong_secret_is_refused() -> None:
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(BODY, header(BODY, ["whsec_other"], NOW), [SECRET], now=NOW)


@pytest.mark.parametrize("age", [301, -301, 10_000])
def test_a_stale_or_future_timestamp_is_refused(age: int) -> None:
    with pytest.raises(SignatureError, match="tolerance"):
        verify(BODY, header(BODY, [SECRET], NOW - age), [SECRET], now=NOW)


def test_within_tolerance_is_accepted() -> None:
    assert verify(BODY, header(BODY, [SECRET], NOW - 300), [SECRET], now=NOW) == NOW - 300


def test_a_tampered_body_is_refused() -> None:
    h = header(BODY, [SECRET], NOW)
    with pytest.raises(SignatureError):
        verify(BODY.replace(b"succeeded", b"failed"), h, [SECRET], now=NOW)


def test_a_replayed_signature_with_a_new_timestamp_is_refused() -> None:
    sig = sign(BODY, SECRET, NOW - 1000)
    with pytest.raises(SignatureError):
        verify(BODY, f"t={NOW},v1={sig}", [SECRET], now=NOW)


def test_rotation_several_v1_signatures_and_our_previous_secret() -> None:
    # Stripe, while rolling its secret, sends one v1 per live secret
    both = header(BODY, ["whsec_new", SECRET], NOW)
    assert verify(BODY, both, [SECRET], now=NOW) == NOW
    # we, after re-configuring, accept the new and (for a while) the previous secret
    assert verify(BODY, header(BODY, [SECRET], NOW), ["whsec_new", SECRET], now=NOW) == NOW
    with pytest.raises(SignatureError):
        verify(BODY, header(BODY, ["whsec_older"], NOW), ["whsec_new", SECRET], now=NOW)


@pytest.mark.parametrize(
    "bad",
    [None, "", "v1=abc", f"t={NOW}", f"t=notanumber,v1={sign(BODY, SECRET, NOW)}", "garbage"],
)
def test_malformed_headers_are_refused(bad: str | None) -> None:
    with pytest.raises(SignatureError):
        verify(BODY, bad, [SECRET], now=NOW)
