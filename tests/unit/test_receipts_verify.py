"""``verify_export`` on chains built in memory with the worker's own ``issue``: an untouched
export verifies; each way of tampering is reported at its line, with its reason."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.receipts import GENESIS, ReceiptData, canonical
from workers.receipts import Failure, KeysError, parse_keys, verify_export
from workers.receipts.service import (
    Attestation,
    Head,
    KeyPair,
    b64url,
    issue,
    jwk,
    new_key,
    private_key,
)
from workers.receipts.verify import Key

TENANT = "acme"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def attestation(customer: str, n: int, total: int = 1000) -> Attestation:
    content = {"invoice_id": f"in{n}", "customer": customer, "currency": "EUR", "total": total}
    return Attestation(TENANT, customer, "invoice", f"in{n}-{customer}", content)


def chain(key: KeyPair, times: Sequence[datetime], customer: str = "alice") -> list[ReceiptData]:
    """A customer's chain of ``len(times)`` invoice receipts issued at ``times``."""
    out: list[ReceiptData] = []
    head = Head(0, GENESIS)
    for n, at in enumerate(times, start=1):
        r = issue(
            attestation(customer, n, 1000 * n), head, key.kid, private_key(key.private_key), at
        )
        out.append(r)
        head = Head(r.seq, r.hash)
    return out


def hourly(n: int, start: datetime = T0) -> list[datetime]:
    return [start + i * HOUR for i in range(n)]


def keys(*entries: tuple[KeyPair, datetime, datetime | None]) -> dict[str, Key]:
    """The parsed JWKS of these keys with their validity (as the API serves it)."""
    document = {"keys": [jwk(k.kid, k.public_key, nb, na) for k, nb, na in entries]}
    return parse_keys(json.loads(json.dumps(document)))


def lines(receipts: Sequence[ReceiptData]) -> list[str]:
    return [r.model_dump_json() for r in receipts]


def forged(r: ReceiptData, signer: KeyPair | None = None, **changes: Any) -> ReceiptData:
    """``r`` with its payload changed (``content_total``: the attested total), its hash
    recomputed, and re-signed by ``signer`` (None: the signature is left as it was)."""
    payload = json.loads(r.payload)
    if "content_total" in changes:
        payload["content"]["total"] = changes.pop("content_total")
    payload.update(changes)
    body = canonical(payload)
    signature = r.signature
    if signer is not None:
        payload["kid"] = signer.kid
        body = canonical(payload)
        signature = b64url(private_key(signer.private_key).sign(body))
    fields = {k: payload[k] for k in ("seq", "prev_hash", "kid", "issued_at") if k in payload}
    return r.model_copy(
        update={
            **fields,
            "issued_at": datetime.fromisoformat(payload["issued_at"]),
            "hash": hashlib.sha256(body).hexdigest(),
            "signature": signature,
            "payload": body.decode(),
        }
    )


def failure(export: list[str], found: dict[str, Key]) -> Failure:
    report = verify_export(export, found)
    assert report.failure is not None, "the tampering went unnoticed"
    return report.failure


KEY = new_key()
KEYS = keys((KEY, T0, None))


def test_an_untouched_export_verifies_every_receipt_of_every_chain() -> None:
    alice = chain(KEY, hourly(4))
    bob = chain(KEY, hourly(2, T0 + 30 * timedelta(minutes=1)), customer="bob")
    # chains interleave freely in one export; blank lines are ignored
    export = [*lines(alice[:2]), "", *lines(bob), *lines(alice[2:]), ""]
    report = verify_export(export, KEYS)
    assert (report.ok, report.receipts, report.chains) == (True, 6, 2)


def test_an_amount_changed_in_a_payload_is_content_changed_at_its_line() -> None:
    receipts = chain(KEY, hourly(4))
    tampered = json.loads(receipts[2].payload)
    tampered["content"]["total"] = 1
    export = lines(receipts)
    export[2] = (
        receipts[2].model_copy(update={"payload": canonical(tampered).decode()}).model_dump_json()
    )
    f = failure(export, KEYS)
    assert (f.line, f.reason, f.seq, f.receipt_id) == (
        3,
        "content_changed",
        3,
        receipts[2].receipt_id,
    )
    assert "does not hash" in f.detail


def test_an_amount_changed_with_the_hash_recomputed_is_a_bad_signature() -> None:
    receipts = chain(KEY, hourly(4))
    receipts[1] = forged(receipts[1], content_total=1)
    f = failure(lines(receipts), KEYS)
    assert (f.line, f.reason, f.seq) == (2, "bad_signature", 2)
    assert KEY.kid in f.detail


def test_a_field_that_disagrees_with_its_payload_is_content_changed() -> None:
    receipts = chain(KEY, hourly(3))
    export = lines(receipts)
    export[1] = receipts[1].model_copy(update={"document_id": "in-other"}).model_dump_json()
    f = failure(export, KEYS)
    assert (f.line, f.reason) == (2, "content_changed")
    assert "document_id" in f.detail


@pytest.mark.parametrize(("removed", "line", "span"), [(2, 3, "seq 3 "), (0, 1, "seq 1 ")])
def test_a_receipt_removed_is_missing(removed: int, line: int, span: str) -> None:
    receipts = chain(KEY, hourly(5))
    del receipts[removed]
    f = failure(lines(receipts), KEYS)
    assert (f.line, f.reason) == (line, "missing")
    assert span in f.detail and "'alice'" in f.detail


def test_two_receipts_removed_name_the_span() -> None:
    receipts = chain(KEY, hourly(5))
    del receipts[1:3]
    f = failure(lines(receipts), KEYS)
    assert (f.line, f.reason, f.seq) == (2, "missing", 4)
    assert "seq 2 to 3" in f.detail


def test_two_receipts_swapped_are_reordered() -> None:
    receipts = chain(KEY, hourly(4))
    receipts[1], receipts[2] = receipts[2], receipts[1]
    f = failure(lines(receipts), KEYS)
    assert (f.line, f.reason, f.seq) == (2, "reordered", 3)
    assert "seq 3 comes before seq 2" in f.detail


@pytest.mark.parametrize("at", [2, 4])
def test_a_receipt_replayed_is_duplicated(at: int) -> None:
    receipts = chain(KEY, hourly(4))
    export = lines(receipts)
    export.insert(at, export[1])  # right after itself, or at the end
    f = failure(export, KEYS)
    assert (f.line, f.reason, f.seq) == (at + 1, "duplicated", 2)


def test_a_receipt_signed_by_a_key_the_keys_do_not_list_is_unknown_key() -> None:
    receipts = chain(KEY, hourly(3))
    other = new_key()
    receipts[2] = forged(receipts[2], signer=other)
    f = failure(lines(receipts), KEYS)
    assert (f.line, f.reason) == (3, "unknown_key")
    assert other.kid in f.detail
    # and every receipt is unknown to keys that are another tenant's
    assert failure(lines(chain(KEY, hourly(1))), keys((other, T0, None))).reason == "unknown_key"


def test_a_receipt_forged_with_a_rotated_out_key_is_expired_key() -> None:
    old, new = new_key(), new_key()
    rotated = T0 + 2 * HOUR
    found = keys((old, T0, rotated), (new, rotated, None))
    receipts = chain(old, hourly(2))  # 09:00 and 10:00, before the rotation at 11:00
    head = Head(receipts[-1].seq, receipts[-1].hash)
    after = issue(attestation("alice", 3), head, new.kid, private_key(new.private_key), rotated)
    receipts.append(after)
    assert verify_export(lines(receipts), found).ok
    # someone holding the old private key signs a new receipt dated after the rotation
    head = Head(after.seq, after.hash)
    at = rotated + HOUR
    receipts.append(issue(attestation("alice", 4), head, old.kid, private_key(old.private_key), at))
    f = failure(lines(receipts), found)
    assert (f.line, f.reason, f.seq) == (4, "expired_key", 4)
    assert old.kid in f.detail
    # a key not valid yet is refused alike
    early = keys((KEY, T0 + HOUR, None))
    assert failure(lines(chain(KEY, hourly(1))), early).reason == "expired_key"


def test_the_first_receipt_must_name_64_zeros_as_prev_hash() -> None:
    receipts = chain(KEY, hourly(2))
    receipts[0] = forged(receipts[0], signer=KEY, prev_hash="ab" * 32)
    f = failure(lines(receipts), KEYS)
    assert (f.line, f.reason, f.seq) == (1, "broken_chain", 1)
    assert "64 zeros" in f.detail


def test_a_receipt_naming_another_previous_hash_breaks_the_chain() -> None:
    receipts = chain(KEY, hourly(3))
    receipts[2] = forged(receipts[2], signer=KEY, prev_hash=receipts[0].hash)
    f = failure(lines(receipts), KEYS)
    assert (f.line, f.reason, f.seq) == (3, "broken_chain", 3)
    assert "seq 2" in f.detail


def test_a_back_dated_receipt_is_reordered() -> None:
    # seq 3 issued before seq 2, properly chained and signed: time went back
    times = [T0, T0 + 2 * HOUR, T0 + HOUR]
    f = failure(lines(chain(KEY, times)), KEYS)
    assert (f.line, f.reason, f.seq) == (3, "reordered", 3)
    assert "issued before" in f.detail


def test_a_line_that_is_not_a_receipt_is_malformed() -> None:
    receipts = chain(KEY, hourly(3))
    export = lines(receipts)
    export[1] = '{"receipt_id": "rct_1"'
    f = failure(export, KEYS)
    assert (f.line, f.reason, f.receipt_id) == (2, "malformed", None)
    report = verify_export(export, KEYS)
    assert report.receipts == 1  # verified before the failure


def test_a_second_receipt_with_the_same_seq_is_a_fork() -> None:
    receipts = chain(KEY, hourly(3))
    # another document signed into seq 3, chained to seq 2 like the real one: a fork
    head = Head(receipts[1].seq, receipts[1].hash)
    fork = issue(
        attestation("alice", 9), head, KEY.kid, private_key(KEY.private_key), T0 + 3 * HOUR
    )
    f = failure([*lines(receipts), fork.model_dump_json()], KEYS)
    assert (f.line, f.reason, f.seq) == (4, "broken_chain", 3)
    assert "forks" in f.detail


def test_keys_whose_validity_has_no_utc_offset_are_refused() -> None:
    document = {
        "keys": [jwk(KEY.kid, KEY.public_key, T0, None) | {"not_before": "2026-03-01T09:00:00"}]
    }
    with pytest.raises(KeysError, match="no UTC offset"):
        parse_keys(document)
