"""Verifying ``Stripe-Signature`` on a webhook's raw body (pure; no I/O).

Header: ``t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=…]``. The signed payload is
``f"{t}.".encode() + body``, HMAC-SHA256 with the endpoint's signing secret. Accepted when
the timestamp is within ``tolerance_s`` of now (either side) and any ``v1`` signature
matches any of our secrets (Stripe sends one ``v1`` per active secret while a secret is
rolled; we keep the previous secret too). Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

TOLERANCE_S = 300


class SignatureError(ValueError):
    """The request is not a genuine, fresh Stripe webhook."""


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The hex ``v1`` signature of ``body`` at ``timestamp`` (for tests and tooling)."""
    payload = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def header(body: bytes, secrets: Sequence[str], timestamp: int) -> str:
    """A ``Stripe-Signature`` header with one ``v1`` per secret."""
    return ",".join([f"t={timestamp}", *(f"v1={sign(body, s, timestamp)}" for s in secrets)])


def verify(
    body: bytes,
    signature_header: str | None,
    secrets: Sequence[str],
    now: float,
    tolerance_s: int = TOLERANCE_S,
) -> int:
    """Return the signed timestamp, or raise ``SignatureError`` saying why (never a secret)."""
    if not signature_header:
        raise SignatureError("missing Stripe-Signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in signature_header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("malformed timestamp in Stripe-Signature") from None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None:
        raise SignatureError("no timestamp in Stripe-Signature")
    if not candidates:
        raise SignatureError("no v1 signature in Stripe-Signature")
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError("timestamp outside the tolerance zone")
    matched = False
    for secret in secrets:
        expected = sign(body, secret, timestamp).encode()
        for candidate in candidates:
            # compare every pair (no early exit) so timing says nothing about which matched
            matched |= hmac.compare_digest(expected, candidate.encode())
    if not matched:
        raise SignatureError("no signature matches the endpoint's signing secret")
    return timestamp
