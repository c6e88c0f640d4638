"""Prepaid credits, pure: which grants pay how much of an invoice (in the documented order),
the invoice's totals after credits, grant status, the ledger entries and every ``credit.*``
event. No I/O (docs/credits.md, ADR 0047).

The order of application: priority (0 first), then the earliest expiry (a grant that never
expires comes after every one that does), then the oldest (earliest ``effective_at``), then
the grant id. Each grant pays what it can of what it may pay for: the lines in its scope (any
line when it has none) and, when credits apply after tax and it has no scope, the tax. It
never pays more than its balance, and all grants together never more than the invoice's
total (or subtotal, before tax) — nothing when that is zero or negative.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from schemas.credits import (
    CreditApplied,
    CreditEntryData,
    CreditExpired,
    CreditGrantData,
    CreditGranted,
    CreditReversed,
    CreditScope,
    CreditVoided,
    GrantStatus,
    Rollover,
)
from schemas.envelope import CloudEvent, new_id
from workers.invoicing import service

SOURCE = "billstream/invoicing"
NEVER = datetime.max.replace(tzinfo=UTC)  # the expiry of a grant that never expires


@dataclass(frozen=True)
class Grant:
    """A grant as application sees it: its order, its balance and what it may pay for."""

    id: str
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    balance: int
    prices: frozenset[str] | None = None  # None: no scope (any line, and tax after tax)
    meters: frozenset[str] | None = None

    @property
    def scoped(self) -> bool:
        return self.prices is not None or self.meters is not None

    def may_pay(self, price_key: str, meter: str | None) -> bool:
        if not self.scoped:
            return True
        return price_key in (self.prices or ()) or (
            meter is not None and meter in (self.meters or ())
        )


def order(grant: Grant) -> tuple[int, bool, datetime, datetime, str]:
    """The documented order of application (sort key)."""
    return (
        grant.priority,
        grant.expires_at is None,
        grant.expires_at or NEVER,
        grant.effective_at,
        grant.id,
    )


@dataclass(frozen=True)
class Payable:
    """What credits may pay on an invoice: a line (its price and meter), or the tax."""

    amount: int
    price_key: str | None = None  # None: the tax
    meter: str | None = None


def allocate(grants: Iterable[Grant], payables: Sequence[Payable]) -> list[tuple[Grant, int]]:
    """Which grants pay how much of ``payables``, in the documented order: each grant takes
    ``min(balance, what is left of what it may pay for, what is left of the whole)`` and
    takes it from those payables in their order. Grants that pay nothing are left out."""
    left = [p.amount for p in payables]
    out: list[tuple[Grant, int]] = []
    for g in sorted(grants, key=order):
        if g.balance <= 0:
            continue
        mine = [
            i
            for i, p in enumerate(payables)
            if (g.may_pay(p.price_key, p.meter) if p.price_key is not None else not g.scoped)
        ]
        take = min(g.balance, sum(left[i] for i in mine), sum(left))
        if take <= 0:
            continue
        out.append((g, take))
        rest = take
        for i in mine:
            if rest == 0:
                break
            part = min(rest, max(left[i], 0))
            left[i] -= part
            rest -= part
    return out


def scope_of(grant: Any) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """A stored grant's scope as the allocator takes it."""
    if not grant.scope:
        return None, None
    return frozenset(grant.scope.get("prices", [])), frozenset(grant.scope.get("meters", []))


def grant_of(row: Any, balance: int) -> Grant:
    prices, meters = scope_of(row)
    return Grant(row.id, row.priority, row.effective_at, row.expires_at, balance, prices, meters)


def status(row: Any, kinds: set[str], balance: int, now: datetime) -> GrantStatus:
    """As of ``now``: pending (a top-up not paid yet), voided, expired, scheduled (not in
    effect yet), depleted or active."""
    if "voided" in kinds:
        return "voided"
    if not kinds & {"granted", "topped_up"}:
        return "pending"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    if row.effective_at > now:
        return "scheduled"
    return "active" if balance > 0 else "depleted"


def credit_line(
    grant_id: str, description: str | None, amount: int, start: datetime, end: datetime
) -> service.Line:
    """The line of an invoice that ``amount`` of grant ``grant_id`` paid (negative)."""
    return service.Line(
        price_key="credit",
        kind="credit",
        description=description or f"Prepaid credit {grant_id}",
        meter=None,
        subject=None,
        period_start=start,
        period_end=end,
        quantity=Decimal(1),
        unit_price=None,
        tiers=(),
        proration=Decimal(1),
        minimum_applied=False,
        amount=-amount,
        grant_id=grant_id,
    )


# --- ledger entries ----------------------------------------------------------------------


def entry(
    tenant_id: str,
    grant_id: str,
    customer_id: str,
    kind: str,
    amount: int,
    at: datetime,
    key: str,
    *,
    invoice_id: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """A ledger row; ``key`` makes it written once."""
    return {
        "id": new_id(),
        "tenant_id": tenant_id,
        "grant_id": grant_id,
        "customer_id": customer_id,
        "kind": kind,
        "amount": amount,
        "at": at,
        "invoice_id": invoice_id,
        "key": key,
        "reason": reason,
    }


def applied_key(grant_id: str, invoice_id: str) -> str:
    return f"applied:{grant_id}:{invoice_id}"


def rollover_grant(row: Any, left: int) -> dict[str, Any] | None:
    """The grant what is left of ``row`` rolls over into at its expiry, or None."""
    if not row.rollover or left <= 0 or row.expires_at is None:
        return None
    rule = Rollover.model_validate(row.rollover)
    amount = min(left, rule.max_amount) if rule.max_amount is not None else left
    return {
        "tenant_id": row.tenant_id,
        "id": new_id(),
        "customer_id": row.customer_id,
        "currency": row.currency,
        "amount": amount,
        "source": row.source,
        "priority": row.priority,
        "effective_at": row.expires_at,
        "expires_at": row.expires_at + timedelta(days=rule.expires_after_days),
        "scope": row.scope,
        "rollover": row.rollover,
        "purchase_amount": None,
        "invoice_id": None,
        "rolled_over_from": row.id,
        "description": row.description,
    }


# --- events ------------------------------------------------------------------------------


def grant_data(row: Any, customer: str, balance: int, state: GrantStatus) -> CreditGrantData:
    return CreditGrantData(
        grant_id=row.id,
        customer=customer,
        currency=row.currency,
        amount=row.amount,
        balance=balance,
        status=state,
        source=row.source,
        priority=row.priority,
        effective_at=row.effective_at,
        expires_at=row.expires_at,
        scope=CreditScope.model_validate(row.scope) if row.scope else None,
        rollover=Rollover.model_validate(row.rollover) if row.rollover else None,
        purchase_amount=row.purchase_amount,
        invoice_id=row.invoice_id,
        rolled_over_from=row.rolled_over_from,
        description=row.description,
    )


def entry_data(
    e: Mapping[str, Any] | Any, customer: str, currency: str, balance: int
) -> CreditEntryData:
    get = e.get if isinstance(e, Mapping) else lambda k: getattr(e, k)
    return CreditEntryData(
        entry_id=get("id"),
        grant_id=get("grant_id"),
        customer=customer,
        currency=currency,
        kind=get("kind"),
        amount=get("amount"),
        at=get("at"),
        invoice_id=get("invoice_id"),
        grant_balance=balance,
    )


ENTRY_EVENTS: dict[str, type[CreditApplied] | type[CreditReversed] | type[CreditExpired]] = {
    "applied": CreditApplied,
    "reversed": CreditReversed,
    "expired": CreditExpired,
}


def entry_event(data: CreditEntryData, **envelope: Any) -> CloudEvent:
    cls = ENTRY_EVENTS[data.kind]
    return cls(source=SOURCE, subject=data.grant_id, data=data, **envelope)


def grant_event(voided: bool, data: CreditGrantData, **envelope: Any) -> CloudEvent:
    cls: type[CreditGranted] | type[CreditVoided] = CreditVoided if voided else CreditGranted
    return cls(source=SOURCE, subject=data.grant_id, data=data, **envelope)
