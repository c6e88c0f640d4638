"""The partners commands: one table from command type to its handler, ``f(command, tx,
ctx) -> result`` (the outcome at ``/v1/commands/{id}``). A ``PermanentError`` fails the
command: nothing it wrote or emitted is kept."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas import topics
from schemas.partners import (
    AttributeCustomer,
    IssueCommissionStatement,
    PayoutData,
    RecordCommissionPayout,
    UpsertCommissionRule,
    UpsertPartner,
    period_bounds,
    statement_id,
)
from storage.partners import CommissionEntryRow, PartnerRepository, PayoutRow, StatementRow
from workers.partners import service, views
from workers.partners.errors import NotFound, PayoutConflict, PayoutTooLarge, PeriodNotEnded
from workers.runtime import Tx


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Context:
    clock: Callable[[], datetime] = utc_now  # when a month has ended (tests move it)


Handler = Callable[[Any, Tx, Context], Awaitable[dict[str, Any]]]


async def upsert_partner(command: UpsertPartner, tx: Tx, ctx: Context) -> dict[str, Any]:
    d = command.data
    row, created = await tx.repo(PartnerRepository).upsert_partner(
        command.tenantid, d.partner_id, d.name, d.tier, d.email
    )
    return {"partner_id": row.partner_id, "tier": row.tier, "created": created}


async def upsert_rule(command: UpsertCommissionRule, tx: Tx, ctx: Context) -> dict[str, Any]:
    d = command.data
    await tx.repo(PartnerRepository).upsert_rule(
        command.tenantid, d.key, d.partner_tier, d.model_dump(mode="json")
    )
    return {"rule": d.key, "partner_tier": d.partner_tier}


async def attribute(command: AttributeCustomer, tx: Tx, ctx: Context) -> dict[str, Any]:
    d, t = command.data, command.tenantid
    repo = tx.repo(PartnerRepository)
    if await repo.partner(t, d.partner_id) is None:
        raise NotFound(f"no partner {d.partner_id!r}", field="partner_id")
    await repo.attribute(t, d.customer, d.partner_id, d.effective_from)
    return {
        "customer": d.customer,
        "partner_id": d.partner_id,
        "effective_from": d.effective_from.isoformat(),
    }


def _summary(row: StatementRow) -> dict[str, Any]:
    return {
        "statement_id": row.statement_id,
        "number": row.number,
        "currency": row.currency,
        "total": row.total,
        "amount_payable": row.amount_payable,
        "status": row.status,
    }


async def issue_statement(
    command: IssueCommissionStatement, tx: Tx, ctx: Context
) -> dict[str, Any]:
    """One statement per currency over the partner's entries effective before the month's
    end and on no statement yet, numbers taken gaplessly, entries assigned — all in this
    transaction (a crash leaves nothing half-issued). The same month again: the same."""
    d, t = command.data, command.tenantid
    _, end = period_bounds(d.period)
    now = ctx.clock()
    if end > now:
        raise PeriodNotEnded(
            f"{d.period} has not ended (it ends {end.isoformat()})", field="period"
        )
    repo = tx.repo(PartnerRepository)
    partner = await repo.partner(t, d.partner_id, lock=True)  # one issue per partner at once
    if partner is None:
        raise NotFound(f"no partner {d.partner_id!r}", field="partner_id")
    existing = await repo.statements(t, d.partner_id, period=d.period)
    if existing:
        return {"issued": False, "statements": [_summary(r) for r in existing]}
    by_currency: dict[str, list[CommissionEntryRow]] = {}
    for e in await repo.unlisted_entries(t, d.partner_id, end):
        by_currency.setdefault(e.currency, []).append(e)
    issued_at = await repo.clock()
    out: list[StatementRow] = []
    for currency, entries in sorted(by_currency.items()):
        carried = await repo.open_carries(t, d.partner_id, currency)
        signed = [c.total for c in carried] + [
            e.amount if e.kind == "accrued" else -e.amount for e in entries
        ]
        totals = service.statement_totals(signed)
        n = await repo.next_number(t, issued_at.year)
        row = StatementRow(
            tenant_id=t,
            statement_id=statement_id(t, d.partner_id, d.period, currency),
            number=service.statement_number(issued_at.year, n),
            partner_id=d.partner_id,
            partner_name=partner.name,
            period=d.period,
            currency=currency,
            total=totals.total,
            amount_payable=totals.payable,
            amount_paid=0,
            status=totals.status,
            carried_to=None,
            issued_at=issued_at,
        )
        await repo.add_statement(row)
        await repo.list_entries(t, row.statement_id, [e.entry_id for e in entries])
        await repo.carry(t, [c.statement_id for c in carried], row.statement_id)
        for e in entries:
            e.statement_id = row.statement_id
        data = views.statement_view(row, entries, carried)
        tx.emit(
            service.statement_issued(data, command),
            topic=topics.EVENTS_PARTNERS,
            key=service.key(t, d.partner_id),
        )
        out.append(row)
    return {"issued": bool(out), "statements": [_summary(r) for r in out]}


async def record_payout(command: RecordCommissionPayout, tx: Tx, ctx: Context) -> dict[str, Any]:
    d, t = command.data, command.tenantid
    repo = tx.repo(PartnerRepository)
    row = await repo.statement(t, d.statement_id, lock=True)
    if row is None:
        raise NotFound(f"no commission statement {d.statement_id!r}", field="statement_id")
    before = await repo.payout(t, d.payout_id)
    if before is not None:
        if (before.statement_id, before.amount) != (d.statement_id, d.amount):
            raise PayoutConflict(f"payout {d.payout_id!r} exists", field="payout_id")
        return {"payout_id": d.payout_id, "amount_paid": row.amount_paid, "status": row.status}
    left = row.amount_payable - row.amount_paid
    if d.amount > left:
        raise PayoutTooLarge(
            f"exceeds what is left payable ({left} minor units of {row.currency})",
            field="amount",
        )
    recorded_at = await repo.clock()
    paid_at = d.paid_at or recorded_at
    await repo.add_payout(
        PayoutRow(
            tenant_id=t,
            payout_id=d.payout_id,
            statement_id=d.statement_id,
            amount=d.amount,
            reference=d.reference,
            paid_at=paid_at,
            recorded_at=recorded_at,
        )
    )
    row.amount_paid += d.amount
    row.status = service.after_payout(row.amount_payable, row.amount_paid)
    await tx.session.flush()
    data = PayoutData(
        payout_id=d.payout_id,
        statement_id=row.statement_id,
        number=row.number,
        partner_id=row.partner_id,
        currency=row.currency,
        amount=d.amount,
        reference=d.reference,
        paid_at=paid_at,
        amount_paid=row.amount_paid,
        status=service.after_payout(row.amount_payable, row.amount_paid),
    )
    tx.emit(
        service.payout_recorded(data, command),
        topic=topics.EVENTS_PARTNERS,
        key=service.key(t, row.partner_id),
    )
    return {"payout_id": d.payout_id, "amount_paid": row.amount_paid, "status": row.status}


COMMANDS: dict[type[Any], Handler] = {
    UpsertPartner: upsert_partner,
    UpsertCommissionRule: upsert_rule,
    AttributeCustomer: attribute,
    IssueCommissionStatement: issue_statement,
    RecordCommissionPayout: record_payout,
}
