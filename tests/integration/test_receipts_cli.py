"""``billstream receipts verify|export|keys|audit`` on receipts of a real billing flow: the
ingress, metering, invoicing, payments and receipts workers, the real broker and PostgreSQL.

A customer's invoice is finalized by a billing run, paid offline, then credited with a
note that refunds part of the payment: four receipts in its chain (invoice, payment,
credit note, refund). ``verify`` accepts the export untouched and finds every kind of
tampering at its line; ``audit`` finds the database changed under the receipts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from schemas.envelope import CloudEvent
from schemas.receipts import ReceiptData, canonical
from storage.payments import Payment
from tests.conftest import TenantKey
from tests.integration.receipts_support import (
    key_of,
    keys_of,
    payment_refunded,
    payment_succeeded,
    receipts_of,
    topic_of,
    with_secrets,
)
from tests.integration.support import Sessions, producer
from tests.integration.test_cli import billstream
from tests.integration.test_credit_notes import invoice, note, pay_offline, wait_invoice
from tests.integration.test_invoicing import Stack, stack
from workers.cli import app
from workers.devstack import wait_for
from workers.invoicing.app import build as build_invoicing
from workers.metering.app import build as build_metering
from workers.ops import receipts as ops
from workers.payments import decrypt_secret
from workers.payments.app import build as build_payments
from workers.receipts.app import build as build_receipts
from workers.receipts.service import b64url, new_key, private_key
from workers.settings import Settings


@pytest.fixture
async def billing(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    s = with_secrets(settings).model_copy(update={"invoicing_tick_s": 0.1, "payments_tick_s": 0.1})
    workers = (build_metering(s), build_invoicing(s), build_payments(s), build_receipts(s))
    async with stack(s, tenant, *workers) as st:
        yield st


async def receipts_issued(sessions: Sessions, tenant: str, n: int) -> None:
    async def issued() -> bool:
        return len(await receipts_of(sessions, tenant)) == n

    await wait_for(issued, timeout_s=30)


async def flow(st: Stack, sessions: Sessions, tenant: str) -> dict[str, Any]:
    """ana: JPY 1000 + 8 % = 1080 finalized, paid offline, a note of 540 refunded; bob: EUR
    50.00 + 20 % = 60.00 finalized. Five receipts, two chains."""
    ana = await invoice(st, "ana", "JPY", "0.08", "1000")
    assert ana["total"] == 1080
    await pay_offline(st, ana["invoice_id"], 1080)
    cn = await note(
        st, ana["invoice_id"], {"reason": "other", "lines": [{"line": 0, "amount": 500}]}
    )
    assert cn["status"] == "succeeded" and cn["result"]["refund_amount"] == 540, cn
    await wait_invoice(st, ana["invoice_id"], lambda b: b["amount_refunded"] == 540)
    bob = await invoice(st, "bob", "EUR", "0.2", "50.00")
    await receipts_issued(sessions, tenant, 5)
    return {"ana": ana, "bob": bob, "note": cn["credit_note_id"]}


async def cli(st: Stack, *args: str) -> tuple[int, str, str]:
    return await billstream("receipts", *args, BILLSTREAM_DATABASE_URL=st.settings.database_url)


def verify(tmp_path: Path, export: Sequence[str], keys: Path) -> tuple[int, str, str]:
    """``billstream receipts verify`` of ``export`` (its lines) in process."""
    file = tmp_path / "export.jsonl"
    file.write_text("".join(line.rstrip("\n") + "\n" for line in export), encoding="utf-8")
    result = CliRunner().invoke(app, ["receipts", "verify", str(file), "--keys", str(keys)])
    return result.exit_code, result.stdout, result.stderr


def resigned(line: str, signer: Any, kid: str, **changes: Any) -> str:
    """The receipt of ``line`` with its payload changed (``total``: the attested total),
    its hash recomputed and signed by ``signer`` (None: its old signature kept)."""
    r = ReceiptData.model_validate_json(line)
    payload = json.loads(r.payload)
    if "total" in changes:
        payload["content"]["total"] = changes.pop("total")
    payload.update(changes, kid=kid)
    body = canonical(payload)
    update = {k: v for k, v in changes.items() if k in ("seq", "prev_hash", "receipt_id")}
    return r.model_copy(
        update={
            **update,
            "kid": kid,
            "issued_at": datetime.fromisoformat(payload["issued_at"]),
            "hash": hashlib.sha256(body).hexdigest(),
            "signature": b64url(signer.sign(body)) if signer is not None else r.signature,
            "payload": body.decode(),
        }
    ).model_dump_json()


async def test_verify_accepts_an_untouched_export_and_finds_each_tampering_at_its_line(
    billing: Stack, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    st, t = billing, tenant.tenant_id
    await flow(st, sessions, t)

    # the customer's export and the tenant's keys, from the CLI
    export_file, keys_file = tmp_path / "ana.jsonl", tmp_path / "keys.json"
    code, out, err = await cli(st, "export", "--customer", "ana", "--output", str(export_file))
    assert code == 0, err
    assert out == "" and "4 receipt(s) of customer 'ana' written to" in err
    code, _, err = await cli(st, "keys", "--tenant", t, "--output", str(keys_file))
    assert code == 0, err
    lines = export_file.read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    assert sorted(kinds) == ["credit_note", "invoice", "payment", "refund"]
    assert kinds[0] == "invoice"
    # to stdout it is the same export
    code, out, _ = await cli(st, "export", "--customer", "ana")
    assert code == 0 and out.splitlines() == lines

    # untouched: exit 0, offline (the settings point at nothing that answers)
    code, out, err = await billstream(
        "receipts", "verify", str(export_file), "--keys", str(keys_file),
        BILLSTREAM_DATABASE_URL="postgresql+asyncpg://nobody@127.0.0.1:9/none",
        BILLSTREAM_KAFKA_BOOTSTRAP="127.0.0.1:9",
    )  # fmt: skip
    assert (code, out.strip()) == (0, "4 receipts of 1 chain verified"), err

    def reason_of(export: list[str], keys: Path = keys_file) -> tuple[int, str]:
        code, out, err = verify(tmp_path, export, keys)
        assert code == 1, (out, err)
        # line N: receipt rct_… (seq S): reason: detail
        head, reason = out.split(": ")[0], out.split(": ")[2]
        return int(head.removeprefix("line ")), reason

    payment_line = kinds.index("payment")
    # an amount changed in the attested content: the payload no longer hashes to its hash
    changed = json.loads(lines[payment_line])
    payload = json.loads(changed["payload"])
    payload["content"]["amount"] = 1
    changed["payload"] = canonical(payload).decode()
    tampered = [*lines]
    tampered[payment_line] = json.dumps(changed)
    assert reason_of(tampered) == (payment_line + 1, "content_changed")
    code, out, _ = verify(tmp_path, tampered, keys_file)
    seq = json.loads(lines[payment_line])["seq"]
    assert f"(seq {seq}): content_changed: " in out and changed["receipt_id"] in out

    # the same with the hash recomputed: the signature gives it away
    kid = json.loads(lines[0])["kid"]
    forged = resigned(lines[2], None, kid, total=1)
    assert reason_of([*lines[:2], forged, lines[3]]) == (3, "bad_signature")
    # a receipt removed, two swapped, one replayed
    assert reason_of([lines[0], lines[2], lines[3]]) == (2, "missing")
    assert reason_of([lines[0], lines[2], lines[1], lines[3]]) == (2, "reordered")
    assert reason_of([*lines[:3], lines[2], lines[3]]) == (4, "duplicated")
    assert reason_of([*lines, lines[1]]) == (5, "duplicated")

    # a receipt signed by a key the JWKS does not list
    stranger = new_key()
    signed = resigned(lines[3], private_key(stranger.private_key), stranger.kid)
    assert reason_of([*lines[:3], signed]) == (4, "unknown_key")

    # the key is rotated (bob's next payment is signed by the new one)
    rotated = await st.api.ok("POST", "/v1/receipts/keys/rotate", {"reason": "yearly"})
    assert rotated["retired_kid"] == kid
    bob = await st.api.get("/v1/invoices", customer="bob")
    await pay_offline(st, bob[0]["invoice_id"], bob[0]["total"])
    await receipts_issued(sessions, t, 6)
    code, _, err = await cli(st, "keys", "--output", str(keys_file))  # the only tenant
    assert code == 0, err
    assert len(json.loads(keys_file.read_text())["keys"]) == 2
    code, out, err = await cli(st, "export", "--customer", "bob")
    assert code == 0, err
    assert [json.loads(line)["kid"] for line in out.splitlines()] == [kid, rotated["kid"]]
    assert verify(tmp_path, out.splitlines(), keys_file)[:2] == (
        0,
        "2 receipts of 1 chain verified\n",
    )

    # whoever kept the old private key signs a receipt dated after the rotation
    [old] = [k for k in await keys_of(sessions, t) if k.kid == kid]
    assert old.not_after is not None
    signer = private_key(decrypt_secret(st.settings, old.private_key))
    last = ReceiptData.model_validate_json(lines[3])
    after = (old.not_after + timedelta(minutes=5)).isoformat()
    extra = resigned(
        lines[3], signer, kid, seq=last.seq + 1, prev_hash=last.hash, issued_at=after,
        receipt_id="rct_" + "f" * 32, subject={"kind": "refund", "id": "re_forged"},
    )  # fmt: skip
    extra = json.dumps(json.loads(extra) | {"kind": "refund", "document_id": "re_forged"})
    assert reason_of([*lines, extra]) == (5, "expired_key")
    code, out, _ = verify(tmp_path, [*lines, extra], keys_file)
    assert f"outside key {kid}'s validity" in out

    # unusable input: exit 2 with one clear line
    code, _, err = verify(tmp_path, lines, tmp_path / "nope.json")
    assert code == 2 and "--keys: no such file" in err, err
    (tmp_path / "bad.json").write_text('{"kty": "OKP"}')
    code, _, err = verify(tmp_path, lines, tmp_path / "bad.json")
    assert code == 2 and "--keys: not a JWKS" in err, err
    result = CliRunner().invoke(app, ["receipts", "verify", str(tmp_path / "none.jsonl"),
                                      "--keys", str(keys_file)])  # fmt: skip
    assert result.exit_code == 2 and "FILE: no such file" in result.stderr
    # and from stdin
    piped = "\n".join(lines) + "\n"
    result = CliRunner().invoke(
        app, ["receipts", "verify", "-", "--keys", str(keys_file)], input=piped
    )
    assert (result.exit_code, result.stdout) == (0, "4 receipts of 1 chain verified\n")
    # a customer without receipts: nothing is written
    code, _, err = await cli(st, "export", "--customer", "zed", "--output", str(tmp_path / "z"))
    assert code == 1 and "--customer: customer 'zed' has no receipt" in err, err
    assert not (tmp_path / "z").exists()


async def test_audit_is_clean_then_finds_a_changed_invoice_and_a_deleted_receipt(
    billing: Stack, sessions: Sessions, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, t = billing, tenant.tenant_id
    docs = await flow(st, sessions, t)
    code, out, err = await cli(st, "audit", "--tenant", t)
    assert code == 0, out + err
    assert out.splitlines() == [
        f"audit of {t}: 2 chain(s), 5 receipt(s), 5 document(s) checked",
        "no problem found",
    ]
    # read in pages of two (chains, receipts, documents): the same
    monkeypatch.setattr(ops, "PAGE", 2)
    paged = await ops.audit(st.settings, t)
    assert (paged.clean, paged.chains, paged.receipts, paged.documents) == (True, 2, 5, 5)

    # an invoice's total changed in the database: its receipt says otherwise
    ana_id = docs["ana"]["invoice_id"]
    async with sessions() as db, db.begin():
        await db.execute(text("UPDATE invoices SET total = 1081 WHERE id = :i"), {"i": ana_id})
    code, out, err = await cli(st, "audit", "--tenant", t)
    assert code == 1, out + err
    [ana_receipt] = [r for r in await receipts_of(sessions, t) if r.document_id == ana_id]
    assert (
        f"receipt {ana_receipt.id} invoice {ana_id}: content differs at total: "
        "attested 1080, now 1081"
    ) in out.splitlines()
    assert out.splitlines()[-1] == "1 problem(s) found"
    code, out, _ = await cli(st, "audit", "--json")
    report = json.loads(out)
    assert (code, report["clean"], report["receipts"]) == (1, False, 5)
    assert [(p["receipt_id"], p["document"]) for p in report["problems"]] == [
        (ana_receipt.id, f"invoice {ana_id}")
    ]
    async with sessions() as db, db.begin():
        await db.execute(text("UPDATE invoices SET total = 1080 WHERE id = :i"), {"i": ana_id})

    # receipts deleted: ana's credit note's (inside the chain), bob's only one (its end)
    receipts = await receipts_of(sessions, t)
    cn = next(r for r in receipts if r.kind == "credit_note")
    bob = next(r for r in receipts if r.customer == "bob")
    async with sessions() as db, db.begin():
        await db.execute(
            text("DELETE FROM receipts WHERE tenant_id = :t AND id IN (:a, :b)"),
            {"t": t, "a": cn.id, "b": bob.id},
        )
    code, out, err = await cli(st, "audit", "--tenant", t)
    assert code == 1, out + err
    found = out.splitlines()
    after_cn = next(r for r in receipts if r.customer == "ana" and r.seq == cn.seq + 1)
    assert any(
        line.startswith(f"receipt {after_cn.id} ")
        and f"chain of customer 'ana', seq {cn.seq + 1}: missing: seq {cn.seq} " in line
        for line in found
    ), found
    assert "chain of customer 'bob' ends at no receipt, its head says seq 1" in out
    assert f"credit note {docs['note']}: has no receipt" in found
    assert f"invoice {docs['bob']['invoice_id']}: has no receipt" in found
    assert found[-1] == "4 problem(s) found"
    paged = await ops.audit(st.settings, t)
    assert sorted(map(str, paged.problems)) == sorted(found[:4])


async def test_audit_leaves_a_refund_made_in_stripe_unchecked_but_not_a_refund_of_nothing(
    billing: Stack, sessions: Sessions, tenant: TenantKey
) -> None:
    """A refund made in Stripe's dashboard (``charge.refunded``) is attested, but payments
    keeps no row of it: the audit says it could not check it. A refund receipt of a
    payment that does not exist is a problem."""
    st, t = billing, tenant.tenant_id
    bob = await invoice(st, "bob", "EUR", "0.2", "50.00")
    inv = bob["invoice_id"]
    async with sessions() as db, db.begin():
        db.add(Payment(
            tenant_id=t, id="pay_card", invoice_id=inv, customer="bob", amount=6000,
            currency="EUR", method="card", attempt=1, state="succeeded", amount_refunded=1000,
            stripe_payment_intent="pi_1", stripe_charge="ch_1", disputed=False,
        ))  # fmt: skip
    events: list[CloudEvent] = [
        payment_succeeded(t, "bob", "pay_card", inv, 6000),
        payment_refunded(t, "bob", "re_stripe", "pay_card", inv, 1000),
    ]
    async with producer(st.settings) as p:
        for e in events:
            await p.send(topic_of(e), e.to_json(), key=key_of(e))
    await receipts_issued(sessions, t, 3)
    code, out, err = await cli(st, "audit")
    assert code == 0, out + err
    [refund] = [r for r in await receipts_of(sessions, t) if r.kind == "refund"]
    assert out.splitlines() == [
        f"unchecked: receipt {refund.id} refund re_stripe: a refund of card payment pay_card "
        "made in Stripe: payments keeps no row of it",
        f"audit of {t}: 1 chain(s), 3 receipt(s), 2 document(s) checked",
        "no problem found",
    ]

    ghost = payment_refunded(t, "bob", "re_ghost", "pay_ghost", inv, 100)
    async with producer(st.settings) as p:
        await p.send(topic_of(ghost), ghost.to_json(), key=key_of(ghost))
    await receipts_issued(sessions, t, 4)
    code, out, err = await cli(st, "audit")
    assert code == 1, out + err
    assert "refund re_ghost: no succeeded refund of this id" in out
    assert out.splitlines()[-1] == "1 problem(s) found"
