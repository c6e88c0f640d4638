"""Our Standard Webhooks signatures against the published test vector and against the
independent ``standardwebhooks`` package."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from workers.webhooks import signing

# The test vector published with the specification's reference libraries (and Svix's docs)
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_published_test_vector() -> None:
    assert signing.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    # the prefix is optional, as in the reference libraries
    bare = VECTOR_SECRET.removeprefix("whsec_")
    assert signing.sign(bare, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    reference = Webhook(VECTOR_SECRET).sign(
        VECTOR_ID, datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC), VECTOR_BODY.decode()
    )
    assert reference == VECTOR_SIGNATURE


def test_generated_secrets_have_the_specified_form() -> None:
    secrets = {signing.generate_secret() for _ in range(50)}
    assert len(secrets) == 50
    for s in secrets:
        assert s.startswith("whsec_")
        assert 24 <= len(base64.b64decode(s.removeprefix("whsec_"))) <= 64


def _headers(keys: list[str], body: bytes, at: datetime, msg_id: str = "msg_x") -> dict[str, str]:
    return signing.headers(keys, msg_id, int(at.timestamp()), body)


def test_a_delivery_verifies_with_the_standardwebhooks_package() -> None:
    secret = signing.generate_secret()
    body = json.dumps({"type": "invoice.finalized", "data": {"amount": 1250}}).encode()
    headers = _headers([secret], body, datetime.now(UTC), "msg_abc")
    assert headers["webhook-id"] == "msg_abc"
    assert headers["content-type"] == "application/json"
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"1250", b"1251"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(body, headers)
    stale = _headers([secret], body, datetime.now(UTC) - timedelta(minutes=10))
    with pytest.raises(WebhookVerificationError):  # receivers reject replays by timestamp
        Webhook(secret).verify(body, stale)


def test_during_a_rotation_both_secrets_sign_and_afterwards_only_the_new_one() -> None:
    old, new = signing.generate_secret(), signing.generate_secret()
    now = datetime.now(UTC)
    expires = now + timedelta(hours=1)
    body = b'{"a":1}'
    keys = signing.signing_secrets(new, old, expires, now)
    assert keys == [new, old]
    headers = _headers(keys, body, now)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(body, headers)  # a receiver already on the new secret
    Webhook(old).verify(body, headers)  # one still on the old secret
    assert signing.signing_secrets(new, old, expires, expires) == [new]
    assert signing.signing_secrets(new, None, None, now) == [new]


def test_malformed_secrets_are_refused() -> None:
    for bad in ("whsec_", "whsec_not base64!"):
        with pytest.raises(ValueError):
            signing.secret_key(bad)
