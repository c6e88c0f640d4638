"""Stripe secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) under ``BILLSTREAM_SECRETS_KEY``.

The setting holds one or more keys, comma-separated, newest first: the first encrypts,
all decrypt (``MultiFernet``), so a key is rotated by prepending the new one, re-saving
each tenant's Stripe settings, then dropping the old key. Ciphertexts are ``enc:<token>``.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from workers.payments.errors import SecretsKeyMissing, SecretUnreadable
from workers.settings import Settings

PREFIX = "enc:"


def _fernet(settings: Settings) -> MultiFernet:
    if settings.secrets_key is None or not settings.secrets_key.get_secret_value().strip():
        raise SecretsKeyMissing("BILLSTREAM_SECRETS_KEY is not set")
    keys = [k.strip() for k in settings.secrets_key.get_secret_value().split(",") if k.strip()]
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except ValueError:
        raise SecretsKeyMissing(
            "BILLSTREAM_SECRETS_KEY must be Fernet keys (32 url-safe base64-encoded bytes)"
        ) from None


def new_key() -> str:
    return Fernet.generate_key().decode()


def encrypt(settings: Settings, plaintext: str) -> str:
    return PREFIX + _fernet(settings).encrypt(plaintext.encode()).decode()


def webhook_secrets(settings: Settings, current: str, previous: str | None) -> list[str]:
    """The signing secrets a Stripe webhook may be signed with, decrypted: the current one,
    and the previous one while a rotation is under way."""
    keys = [decrypt(settings, current)]
    if previous:
        keys.append(decrypt(settings, previous))
    return keys


def decrypt(settings: Settings, ciphertext: str) -> str:
    if not ciphertext.startswith(PREFIX):
        raise ValueError("not a billstream ciphertext")
    try:
        return _fernet(settings).decrypt(ciphertext[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "a Stripe secret cannot be decrypted with any configured key"
        ) from None
