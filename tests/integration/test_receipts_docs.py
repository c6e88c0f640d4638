"""docs/receipts.md's "Verify with nothing but Python" program, run exactly as the page
shows it (in a fresh interpreter, with no billstream on its path): it verifies a real
export of the receipts worker, and refuses an altered amount, a removed, swapped or
repeated receipt, a forged signature and a receipt signed by a rotated-out key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.envelope import CloudEvent
from schemas.receipts import GENESIS, ReceiptData
from tests.conftest import TenantKey
from tests.integration.receipts_support import (
    invoice_finalized,
    key_of,
    keys_of,
    payment_succeeded,
    receipts_of,
    topic_of,
    with_secrets,
)
from tests.integration.support import Sessions, producer, running
from workers.devstack import wait_for
from workers.receipts import export_line, jwks
from workers.receipts.app import build
from workers.receipts.service import Attestation, Head, issue, jwk, new_key, private_key
from workers.settings import Settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "receipts.md"


def program() -> str:
    """The page's verifier: the python block right after its marker."""
    found = re.search(r"<!-- receipts-verifier -->\n```python\n(.*?)\n```", PAGE.read_text(), re.S)
    assert found, "docs/receipts.md has no verifier block"
    code = found[1]
    assert len(code.splitlines()) < 30, "the page promises fewer than 30 lines"
    return code


def run(tmp: Path, lines: list[str], keys: dict[str, object]) -> subprocess.CompletedProcess[str]:
    (tmp / "verify_receipts.py").write_text(program())
    (tmp / "chain.jsonl").write_text("".join(line if line.endswith("\n") else line + "\n"
                                             for line in lines))  # fmt: skip
    (tmp / "keys.json").write_text(json.dumps(keys))
    return subprocess.run(
        [sys.executable, "-I", "verify_receipts.py", "chain.jsonl", "keys.json"],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_page_verifier_accepts_a_real_export(
    settings: Settings, sessions: Sessions, tenant: TenantKey, tmp_path: Path
) -> None:
    t = tenant.tenant_id
    settings = with_secrets(settings)
    events: list[CloudEvent] = [
        invoice_finalized(t, "bistro-7", "in1", 85318),
        payment_succeeded(t, "bistro-7", "pay1", "in1", 85318),
        invoice_finalized(t, "bistro-7", "in2", 1200),
    ]
    async with producer(settings) as p:
        for e in events:
            await p.send(topic_of(e), e.to_json(), key=key_of(e))
        await p.flush()
    async with running(build(settings)):

        async def issued() -> bool:
            return len(await receipts_of(sessions, t)) == 3

        await wait_for(issued, timeout_s=30)
    lines = [export_line(r) for r in await receipts_of(sessions, t, "bistro-7")]
    keys = jwks(await keys_of(sessions, t))
    done = run(tmp_path, lines, keys)
    assert (done.returncode, done.stdout) == (0, "3 receipts verified\n"), done.stderr
    tampered = [line.replace("85318", "85000") for line in lines]
    refused = run(tmp_path, tampered, keys)
    assert refused.returncode != 0 and "content changed" in refused.stderr


# --- a chain made in memory, signed by two keys: the second after a rotation -------------

T0 = datetime(2026, 12, 4, 10, tzinfo=UTC)
ROTATED = T0 + timedelta(hours=1)


def chain() -> tuple[list[str], dict[str, object], list[str]]:
    """Four receipts (two by the first key, two by the second), the JWKS, and a fifth
    receipt forged with the first key after it was rotated out."""
    old, new = new_key(), new_key()
    keys = {"keys": [jwk(old.kid, old.public_key, T0, ROTATED), jwk(new.kid, new.public_key,
                                                                     ROTATED, None)]}  # fmt: skip
    head, lines = Head(0, GENESIS), []
    for i in range(5):
        at = T0 + timedelta(minutes=30 * i)  # 10:00, 10:30 | 11:00, 11:30 | forged 12:00
        signer = old if at < ROTATED or i == 4 else new
        doc = Attestation("acme", "bistro-7", "invoice", f"in{i}", {"total": 1000 + i})
        r = issue(doc, head, signer.kid, private_key(signer.private_key), at)
        head = Head(r.seq, r.hash)
        lines.append(r.model_dump_json())
    return lines[:4], keys, lines


def rehashed(line: str, old: str, new: str) -> str:
    """``line`` with ``old`` replaced in its payload and the hash recomputed (a forger's
    edit: only the signature can tell)."""
    import hashlib

    r = ReceiptData.model_validate_json(line)
    payload = r.payload.replace(old, new)
    return r.model_copy(
        update={"payload": payload, "hash": hashlib.sha256(payload.encode()).hexdigest()}
    ).model_dump_json()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("untouched", None),
        ("amount changed", "seq 2: content changed"),
        ("amount changed, hash recomputed", "InvalidSignature"),
        ("receipt removed", "seq 3: missing, reordered or repeated receipt after seq 1"),
        ("two swapped", "seq 3: missing, reordered or repeated receipt after seq 1"),
        ("one replayed", "seq 2: missing, reordered or repeated receipt after seq 4"),
        ("signed by a rotated-out key", "seq 5: signed outside its key's validity"),
    ],
)
def test_the_page_verifier_refuses_what_was_altered(
    case: str, expected: str | None, tmp_path: Path
) -> None:
    lines, keys, with_forged = chain()
    forged = rehashed(lines[1], "1001", "9001")
    altered = {
        "untouched": lines,
        "amount changed": [lines[0], lines[1].replace("1001", "9001"), *lines[2:]],
        "amount changed, hash recomputed": [lines[0], forged, *lines[2:]],
        "receipt removed": [lines[0], *lines[2:]],
        "two swapped": [lines[0], lines[2], lines[1], lines[3]],
        "one replayed": [*lines, lines[1]],
        "signed by a rotated-out key": with_forged,
    }[case]
    done = run(tmp_path, altered, keys)
    if expected is None:
        assert (done.returncode, done.stdout) == (0, "4 receipts verified\n"), done.stderr
    else:
        assert done.returncode != 0 and expected in done.stderr, done.stderr
