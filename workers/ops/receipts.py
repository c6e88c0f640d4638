"""``billstream receipts verify|export|keys|audit``: receipts for a customer or an auditor
(docs/receipts.md).

- ``verify``: an export (JSON lines) against a JWKS, offline: no settings, no database;
- ``export`` / ``keys``: a customer's chain as JSON lines, a tenant's public keys as a JWKS,
  read from the database a page at a time;
- ``audit``: every chain of a tenant rebuilt from the database and compared with what was
  issued — each chain verifies against the tenant's keys and ends at its recorded head,
  each receipt attests what its document says now (its immutable part, rebuilt with the
  worker's own functions), every finalized invoice, credit note, succeeded payment and
  refund has its receipt and every receipt its document.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO

from schemas.receipts import canonical, receipt_id
from storage.receipts import ReceiptRepository, ReceiptRow
from workers import invoicing, payments, receipts
from workers.ops.errors import OpsError
from workers.ops.progress import NoProgress, Progress
from workers.runtime import Tx
from workers.runtime.database import database
from workers.settings import Settings

JOB = "ops.receipts"
#: receipts (or documents) read per statement
PAGE = 500

Kind = Literal["invoice", "credit_note", "payment", "refund"]
KINDS: tuple[Kind, ...] = ("invoice", "credit_note", "payment", "refund")


# --- verify (offline) ----------------------------------------------------------------------


def export_lines(text: str) -> list[str]:
    """An export's lines: split on newlines only (a JSON string may hold U+2028)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def verify_summary(report: receipts.Report) -> str:
    """``12 receipts of 1 chain verified``."""
    n, c = report.receipts, report.chains
    return f"{n} receipt{'s' if n != 1 else ''} of {c} chain{'s' if c != 1 else ''} verified"


# --- export and keys ------------------------------------------------------------------------


async def write_chain(
    settings: Settings,
    tenant: str,
    customer: str,
    out: TextIO,
    progress: Progress = NoProgress(),
) -> int:
    """Write the customer's chain to ``out`` as JSON lines, in order, a page at a time; how
    many receipts (those issued while it runs may be included: a chain only grows)."""
    async with database(settings, pool_size=1) as jobs, jobs.transaction(JOB) as tx:
        head = await tx.repo(ReceiptRepository).head(tenant, customer)
        if head is None:
            raise OpsError(f"customer {customer!r} has no receipt", option="--customer")
        progress.begin(f"receipts of {customer}", head[1])
        n = 0
        async for row in tx.repo(ReceiptRepository).chain(tenant, customer, page_size=PAGE):
            out.write(receipts.export_line(row))
            n += 1
            progress.advance()
        return n


async def tenant_keys(settings: Settings, tenant: str) -> dict[str, Any]:
    """The tenant's public keys, current and past, as a JWKS."""
    async with database(settings, pool_size=1) as jobs, jobs.transaction(JOB) as tx:
        rows = await tx.repo(ReceiptRepository).keys(tenant)
        if not rows:
            raise OpsError(f"tenant {tenant!r} has no receipt key yet", option="--tenant")
        return receipts.jwks(rows)


# --- audit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing the audit found: the receipt (when there is one), the document (kind and
    id, when known) and what is wrong."""

    receipt_id: str | None
    document: str | None
    problem: str

    def __str__(self) -> str:
        who = [f"receipt {self.receipt_id}"] if self.receipt_id else []
        who += [self.document] if self.document else []
        return f"{' '.join(who) or 'tenant'}: {self.problem}"


@dataclass
class Audit:
    tenant: str
    chains: int = 0
    receipts: int = 0
    documents: int = 0
    problems: list[Problem] = field(default_factory=list)
    unchecked: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (
            f"audit of {self.tenant}: {self.chains} chain(s), {self.receipts} receipt(s), "
            f"{self.documents} document(s) checked"
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["clean"] = self.clean
        return out


def first_difference(attested: Any, now: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first key path where two JSON values differ (``lines[0].amount``), with the
    value at it on each side (``None``: absent); None when they are equal."""
    if isinstance(attested, dict) and isinstance(now, dict):
        for k in sorted(attested.keys() | now.keys()):
            sub = f"{path}.{k}" if path else k
            if k not in attested or k not in now:
                return sub, attested.get(k), now.get(k)
            found = first_difference(attested[k], now[k], sub)
            if found is not None:
                return found
        return None
    if isinstance(attested, list) and isinstance(now, list):
        for i, (a, b) in enumerate(zip(attested, now, strict=False)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        if len(attested) != len(now):
            i = min(len(attested), len(now))
            return f"{path}[{i}]", attested[i : i + 1] or None, now[i : i + 1] or None
        return None
    if type(attested) is not type(now) or attested != now:
        return path or "(content)", attested, now
    return None


def _shown(value: Any) -> str:
    text = "absent" if value is None else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 120 else text[:117] + "..."


Rebuild = Callable[[Any], dict[str, Any]]
_CONTENT: Mapping[Kind, Rebuild] = {
    "invoice": receipts.invoice_content,
    "credit_note": receipts.credit_note_content,
    "payment": receipts.payment_content,
    "refund": receipts.refund_content,
}


async def _documents(tx: Tx, tenant: str, kind: Kind, ids: Sequence[str]) -> Mapping[str, Any]:
    """The documents of ``kind`` with these ids, as their events carried them."""
    if kind == "invoice":
        return await invoicing.attested_invoices(tx, tenant, ids)
    if kind == "credit_note":
        return await invoicing.attested_credit_notes(tx, tenant, ids)
    if kind == "payment":
        return await payments.attested_payments(tx, tenant, ids)
    return await payments.attested_refunds(tx, tenant, ids)


async def _page_of(
    tx: Tx, tenant: str, kind: Kind, after: str | None
) -> tuple[list[str], str | None]:
    if kind == "invoice" or kind == "credit_note":
        return await invoicing.finalized_documents(tx, tenant, kind, after, PAGE)
    return await payments.succeeded_documents(tx, tenant, kind, after, PAGE)


def _label(kind: str, id: str) -> str:
    return f"{kind.replace('_', ' ')} {id}"


async def _check_contents(tx: Tx, audit: Audit, rows: Sequence[ReceiptRow]) -> None:
    """(b) Each receipt attests what its document says now; its document exists."""
    by_kind: dict[str, list[ReceiptRow]] = {}
    for r in rows:
        by_kind.setdefault(r.kind, []).append(r)
    for kind, mine in by_kind.items():
        if kind not in _CONTENT:
            for r in mine:
                audit.problems.append(Problem(r.id, None, f"unknown kind {kind!r}"))
            continue
        k: Kind = kind  # type: ignore[assignment]
        found = await _documents(tx, audit.tenant, k, [r.document_id for r in mine])
        for r in mine:
            doc = found.get(r.document_id)
            what = _label(kind, r.document_id)
            try:
                attested = json.loads(r.payload)["content"]
            except (ValueError, KeyError, TypeError):
                continue  # not a receipt payload: the chain's verification says so
            if doc is None:
                await _no_document(tx, audit, r, k, attested)
                continue
            now = json.loads(canonical(_CONTENT[k](doc)))
            diff = first_difference(attested, now)
            if diff is not None:
                path, was, is_ = diff
                audit.problems.append(Problem(
                    r.id, what,
                    f"content differs at {path}: attested {_shown(was)}, now {_shown(is_)}",
                ))  # fmt: skip


async def _no_document(
    tx: Tx, audit: Audit, r: ReceiptRow, kind: Kind, attested: Mapping[str, Any]
) -> None:
    what = _label(kind, r.document_id)
    if kind == "refund":
        # a refund made in Stripe's dashboard (charge.refunded) is not kept as a row: its
        # card payment is all there is to check it against
        pid = attested.get("payment_id") if isinstance(attested, Mapping) else None
        paid = await payments.attested_payments(tx, audit.tenant, [str(pid)]) if pid else {}
        payment = paid.get(str(pid))
        if payment is not None and payment.method == "card":
            audit.unchecked.append(Problem(
                r.id, what,
                f"a refund of card payment {pid} made in Stripe: payments keeps no row of it",
            ))  # fmt: skip
            return
    state = "finalized " if kind == "invoice" else "succeeded " if kind != "credit_note" else ""
    audit.problems.append(Problem(r.id, what, f"no {state}{kind.replace('_', ' ')} of this id"))


async def _check_chain(
    tx: Tx, audit: Audit, keys: Mapping[str, Any], customer: str, seq: int, hash: str
) -> None:
    """(a) The chain verifies and holds its head (``seq``, ``hash``, read before it: a
    receipt issued meanwhile only adds to it); (b) for each of its receipts."""
    lines: list[str] = []
    rows: list[ReceiptRow] = []
    last: ReceiptRow | None = None
    at_head: ReceiptRow | None = None  # the receipt at the head's seq (read before the chain)
    async for row in tx.repo(ReceiptRepository).chain(audit.tenant, customer, page_size=PAGE):
        lines.append(receipts.export_line(row))
        rows.append(row)
        last = row
        at_head = row if row.seq == seq else at_head
        if len(rows) == PAGE:
            await _check_contents(tx, audit, rows)
            rows = []
    await _check_contents(tx, audit, rows)
    audit.receipts += len(lines)
    report = receipts.verify_export(lines, keys)
    if report.failure is not None:
        f = report.failure
        document = None
        if f.line <= len(lines):
            r = json.loads(lines[f.line - 1])
            document = _label(r["kind"], r["document_id"])
        audit.problems.append(Problem(
            f.receipt_id, document,
            f"chain of customer {customer!r}, seq {f.seq}: {f.reason}: {f.detail}",
        ))  # fmt: skip
    elif at_head is None:
        ends = f"seq {last.seq}" if last is not None else "no receipt"
        audit.problems.append(Problem(
            last.id if last is not None else None, None,
            f"chain of customer {customer!r} ends at {ends}, its head says seq {seq}: "
            "receipts after it are missing",
        ))  # fmt: skip
    elif at_head.hash != hash:
        audit.problems.append(Problem(
            at_head.id, _label(at_head.kind, at_head.document_id),
            f"chain of customer {customer!r}, seq {seq}: not the receipt its head recorded "
            "(another hash)",
        ))  # fmt: skip


async def _check_documents(tx: Tx, audit: Audit, kind: Kind, after: str | None) -> str | None:
    """(c) A page of the tenant's documents of ``kind``: each has its receipt. The cursor
    to read on from."""
    ids, cursor = await _page_of(tx, audit.tenant, kind, after)
    wanted = {(audit.tenant, receipt_id(audit.tenant, kind, i)): i for i in ids}
    issued = await tx.repo(ReceiptRepository).existing(wanted)
    for key, id in wanted.items():
        if key not in issued:
            audit.problems.append(Problem(None, _label(kind, id), "has no receipt"))
    audit.documents += len(ids)
    return cursor


async def audit(settings: Settings, tenant: str, progress: Progress = NoProgress()) -> Audit:
    """Audits every chain of the tenant (a chain per transaction, its receipts a page at a
    time), then every attestable document (a page per transaction)."""
    result = Audit(tenant)
    async with database(settings, pool_size=1) as jobs:
        async with jobs.transaction(JOB) as tx:
            keys = receipts.parse_keys(receipts.jwks(await tx.repo(ReceiptRepository).keys(tenant)))
        progress.begin("chains", None)
        after: str | None = None
        while True:
            async with jobs.transaction(JOB) as tx:
                heads = await tx.repo(ReceiptRepository).heads(tenant, after, PAGE)
            for customer, seq, hash in heads:
                async with jobs.transaction(JOB) as tx:
                    await _check_chain(tx, result, keys, customer, seq, hash)
                result.chains += 1
                progress.advance()
            if len(heads) < PAGE:
                break
            after = heads[-1][0]
        for kind in KINDS:
            progress.begin(f"{kind.replace('_', ' ')}s", None)
            cursor: str | None = None
            while True:
                async with jobs.transaction(JOB) as tx:
                    before = result.documents
                    cursor = await _check_documents(tx, result, kind, cursor)
                progress.advance(result.documents - before)
                if cursor is None:
                    break
    return result
