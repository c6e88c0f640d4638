"""Signed, expiring links a customer follows without an API key: an invoice's hosted page
and a portal session (docs/documents.md, ADR 0054).

A token is ``v1.<payload>.<mac>``: the payload is base64url JSON ``[purpose, tenant,
subject, expires (unix seconds), locale]`` (a portal session's ``return_url``, when it has
one, as a sixth item), the MAC an HMAC-SHA256 of ``v1.<payload>``
under a key derived (HKDF-SHA256) from each of ``BILLSTREAM_SECRETS_KEY``'s keys: the first
signs, all verify, so the secrets key rotates as it does for Stripe secrets. Nothing is
stored: a link cannot be revoked before it expires (portal sessions are short for that).
Pure: no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

Purpose = Literal["invoice", "portal"]
_VERSION = "v1"
_INFO = b"billstream links v1"
# a longer path segment is refused before anything decodes it (a 2048-character return_url fits)
MAX_TOKEN = 4096
# where each kind of link leads, under the ingress's public address (settings.public_base_url)
PATHS: dict[str, str] = {"invoice": "/hosted/invoices/", "portal": "/portal/"}


class LinkError(ValueError):
    """Why a token is refused: ``malformed``, ``bad_signature``, ``expired`` or
    ``wrong_purpose`` (pages answer all alike: the link is not valid)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Link:
    purpose: Purpose
    tenant_id: str
    subject: str  # the invoice id, or the customer's external id
    expires_at: datetime
    locale: str | None = None
    return_url: str | None = None  # a portal session's "back" link (the tenant's app)


def link_keys(secrets_key: str) -> list[bytes]:
    """The MAC keys of ``BILLSTREAM_SECRETS_KEY`` (comma-separated, newest first)."""
    keys = [k.strip() for k in secrets_key.split(",") if k.strip()]
    return [
        HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(k.encode())
        for k in keys
    ]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed: str) -> str:
    return _b64(hmac.new(key, signed.encode(), hashlib.sha256).digest())


def sign(keys: Sequence[bytes], link: Link) -> str:
    payload = [
        link.purpose,
        link.tenant_id,
        link.subject,
        int(link.expires_at.timestamp()),
        link.locale,
    ]
    if link.return_url is not None:
        payload.append(link.return_url)
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    signed = f"{_VERSION}.{body}"
    return f"{signed}.{_mac(keys[0], signed)}"


def link_url(base_url: str, keys: Sequence[bytes], link: Link) -> str:
    """The URL a customer follows: ``{base_url}/hosted/invoices/{token}`` or
    ``{base_url}/portal/{token}``."""
    return f"{base_url.rstrip('/')}{PATHS[link.purpose]}{sign(keys, link)}"


def verify(keys: Sequence[bytes], token: str, purpose: Purpose, now: datetime) -> Link:
    """The link ``token`` stands for; LinkError if it is malformed, altered, of another
    purpose or expired at ``now``."""
    parts = token.split(".") if len(token) <= MAX_TOKEN else []
    if len(parts) != 3 or parts[0] != _VERSION:
        raise LinkError("malformed")
    signed = f"{parts[0]}.{parts[1]}"
    if not any(hmac.compare_digest(_mac(k, signed), parts[2]) for k in keys):
        raise LinkError("bad_signature")
    try:
        kind, tenant_id, subject, expires, locale, *rest = json.loads(_unb64(parts[1]))
        return_url = str(rest[0]) if len(rest) == 1 and rest[0] is not None else None
        if len(rest) > 1:
            raise ValueError("too many items")
        expires_at = datetime.fromtimestamp(int(expires), UTC)
    except (ValueError, TypeError, binascii.Error):
        raise LinkError("malformed") from None
    if kind != purpose:
        raise LinkError("wrong_purpose")
    if now >= expires_at:
        raise LinkError("expired")
    return Link(kind, str(tenant_id), str(subject), expires_at, locale, return_url)
