"""Verifying receipts offline: an export (JSON lines, one receipt each) against a tenant's
public keys (its JWKS). Pure: ``billstream receipts verify`` and ``receipts audit`` both
use it; the result names the first receipt that fails and why (docs/receipts.md)."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from schemas.receipts import GENESIS, Payload, ReceiptData, canonical
from workers.receipts.service import unb64url

Reason = Literal[
    "malformed",
    "content_changed",
    "unknown_key",
    "expired_key",
    "bad_signature",
    "missing",
    "reordered",
    "duplicated",
    "broken_chain",
]


@dataclass(frozen=True)
class Key:
    kid: str
    public: Ed25519PublicKey
    not_before: datetime
    not_after: datetime | None

    def valid_at(self, at: datetime) -> bool:
        return self.not_before <= at and (self.not_after is None or at < self.not_after)


@dataclass(frozen=True)
class Failure:
    line: int  # 1-based, in the export
    reason: Reason
    detail: str
    receipt_id: str | None = None
    seq: int | None = None

    def __str__(self) -> str:
        what = f"receipt {self.receipt_id} (seq {self.seq})" if self.receipt_id else "receipt"
        return f"line {self.line}: {what}: {self.reason}: {self.detail}"


@dataclass(frozen=True)
class Report:
    receipts: int  # verified before the first failure (all of them when none failed)
    chains: int
    failure: Failure | None

    @property
    def ok(self) -> bool:
        return self.failure is None


class KeysError(ValueError):
    """The keys document is not a JWKS of Ed25519 keys with their validity."""


def parse_keys(document: Mapping[str, Any]) -> dict[str, Key]:
    """The keys of a JWKS as ``/.well-known/billstream/{tenant}/keys.json`` serves it."""
    keys = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(keys, list):
        raise KeysError('not a JWKS: no "keys" list')
    found: dict[str, Key] = {}
    for i, k in enumerate(keys):
        try:
            if k.get("kty") != "OKP" or k.get("crv") != "Ed25519":
                raise KeysError(f"keys[{i}] is not an Ed25519 key (kty OKP, crv Ed25519)")
            public = Ed25519PublicKey.from_public_bytes(unb64url(k["x"]))
            after = k.get("not_after")
            found[str(k["kid"])] = Key(
                str(k["kid"]), public, _instant(k["not_before"]), _instant(after) if after else None
            )
        except KeysError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise KeysError(f"keys[{i}] is not a usable key with its validity: {e}") from None
    return found


def _instant(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")  # becomes KeysError
    return at


# the fields a receipt repeats from its payload, which must agree with it
_REPEATED = ("receipt_id", "customer", "seq", "kid", "issued_at", "prev_hash")


def _check_one(
    n: int, r: ReceiptData, keys: Mapping[str, Key]
) -> tuple[Payload | None, Failure | None]:
    def fail(reason: Reason, detail: str) -> tuple[None, Failure]:
        return None, Failure(n, reason, detail, r.receipt_id, r.seq)

    body = r.payload.encode()
    if hashlib.sha256(body).hexdigest() != r.hash:
        return fail("content_changed", "its payload does not hash to its recorded hash")
    try:
        payload = Payload.model_validate_json(body)
        if canonical(json.loads(body)) != body:
            return fail("content_changed", "its payload is not canonical JSON (RFC 8785)")
    except (ValidationError, ValueError) as e:
        return fail("content_changed", f"its payload is not a receipt payload: {e}")
    for name in _REPEATED:
        if getattr(r, name) != getattr(payload, name):
            return fail("content_changed", f"{name} differs from what its payload says")
    if (r.kind, r.document_id) != (payload.subject.kind, payload.subject.id):
        return fail("content_changed", "kind or document_id differs from its payload's subject")
    key = keys.get(payload.kid)
    if key is None:
        return fail("unknown_key", f"signed with key {payload.kid}, which the keys do not list")
    if not key.valid_at(payload.issued_at):
        return fail(
            "expired_key",
            f"issued at {payload.issued_at.isoformat()}, outside key {key.kid}'s validity "
            f"({key.not_before.isoformat()} to "
            f"{key.not_after.isoformat() if key.not_after else 'now'})",
        )
    try:
        key.public.verify(unb64url(r.signature), body)
    except (InvalidSignature, ValueError):
        return fail("bad_signature", f"the signature does not verify with key {key.kid}")
    return payload, None


def verify_export(lines: Sequence[str], keys: Mapping[str, Key]) -> Report:
    """Checks every receipt of an export (blank lines ignored) and the chains they form:
    each receipt on its own (hash, canonical payload, key and its validity, signature),
    then its place (seq 1, 2, 3, … with no gap, repeat or reordering, each naming the
    previous receipt's hash, times never going back)."""
    records: list[tuple[int, ReceiptData]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((n, ReceiptData.model_validate_json(line)))
        except (ValidationError, ValueError) as e:
            reason = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
            return Report(len(records), 0, Failure(n, "malformed", f"not a receipt: {reason}"))
    present: dict[str, set[int]] = defaultdict(set)  # per customer, the seqs in the file
    for _, r in records:
        present[r.customer].add(r.seq)
    heads: dict[tuple[str, str], tuple[int, str, datetime | None]] = {}
    seen: set[str] = set()
    done = 0
    for n, r in records:
        payload, failure = _check_one(n, r, keys)
        if failure is None and payload is not None:
            chain = (payload.tenant, payload.customer)
            head = heads.get(chain, (0, GENESIS, None))
            wrong = _place(r, payload, head, seen, present[r.customer])
            if wrong is None:
                heads[chain] = (r.seq, r.hash, payload.issued_at)
                seen.add(r.receipt_id)
                done += 1
                continue
            failure = Failure(n, wrong[0], wrong[1], r.receipt_id, r.seq)
        return Report(done, len(heads), failure)
    return Report(done, len(heads), None)


def _place(
    r: ReceiptData,
    payload: Payload,
    head: tuple[int, str, datetime | None],
    seen: set[str],
    present: set[int],
) -> tuple[Reason, str] | None:
    """Why ``r`` cannot follow ``head`` in its chain; None when it can."""
    last_seq, last_hash, last_at = head
    if r.receipt_id in seen:
        return "duplicated", "this receipt appears a second time"
    if r.seq == last_seq:
        return "broken_chain", f"a second, different receipt with seq {r.seq}: the chain forks"
    if r.seq < last_seq:
        return "reordered", f"seq {r.seq} comes after seq {last_seq}"
    if r.seq > last_seq + 1:
        if set(range(last_seq + 1, r.seq)) & present:
            return "reordered", f"seq {r.seq} comes before seq {last_seq + 1}"
        first, last = last_seq + 1, r.seq - 1
        span = f"seq {first}" if first == last else f"seq {first} to {last}"
        return "missing", f"{span} of customer {r.customer!r} is missing"
    if payload.prev_hash != last_hash:
        if last_seq:
            return "broken_chain", f"its prev_hash is not the hash of seq {last_seq}"
        return "broken_chain", "the first receipt of a chain names 64 zeros as prev_hash"
    if last_at is not None and payload.issued_at < last_at:
        return "reordered", "issued before the receipt it follows"
    return None
