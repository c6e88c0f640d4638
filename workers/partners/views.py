"""Rows → contracts: what the ingress answers with and what the events carry."""

from __future__ import annotations

from schemas.partners import (
    AttributionData,
    CommissionData,
    CommissionRuleData,
    PartnerData,
    StatementData,
    StatementLine,
)
from storage.partners import (
    AttributionRow,
    CommissionEntryRow,
    CommissionRuleRow,
    PartnerRepository,
    PartnerRow,
    StatementRow,
)


def partner_data(row: PartnerRow) -> PartnerData:
    return PartnerData(
        partner_id=row.partner_id,
        name=row.name,
        tier=row.tier,
        email=row.email,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def rule_data(row: CommissionRuleRow) -> CommissionRuleData:
    return CommissionRuleData.model_validate({**row.spec, "updated_at": row.updated_at})


def attribution_data(row: AttributionRow) -> AttributionData:
    return AttributionData(
        customer=row.customer,
        partner_id=row.partner_id,
        effective_from=row.effective_from,
        recorded_at=row.recorded_at,
    )


def commission_data(row: CommissionEntryRow) -> CommissionData:
    return CommissionData(
        entry_id=row.entry_id,
        kind=row.kind,
        partner_id=row.partner_id,
        customer=row.customer,
        invoice_id=row.invoice_id,
        invoice_number=row.invoice_number,
        rule=row.rule,
        rule_kind=row.rule_kind,
        currency=row.currency,
        base_minor=row.base,
        amount=row.amount,
        period=row.period,
        effective_at=row.effective_at,
        cause=row.cause,
        cause_id=row.cause_id,
        accrual_id=row.accrual_id,
        statement_id=row.statement_id,
    )


def entry_line(row: CommissionEntryRow) -> StatementLine:
    return StatementLine(
        entry_id=row.entry_id,
        kind=row.kind,
        invoice_id=row.invoice_id,
        invoice_number=row.invoice_number,
        customer=row.customer,
        rule=row.rule,
        cause=row.cause,
        effective_at=row.effective_at,
        amount=row.amount if row.kind == "accrued" else -row.amount,
    )


def carried_line(row: StatementRow) -> StatementLine:
    """An earlier statement's negative total, taken over by a later one."""
    return StatementLine(entry_id=row.statement_id, kind="carried", amount=row.total)


def statement_view(
    row: StatementRow, entries: list[CommissionEntryRow], carried: list[StatementRow]
) -> StatementData:
    lines = [carried_line(c) for c in carried] + [entry_line(e) for e in entries]
    return StatementData(
        statement_id=row.statement_id,
        number=row.number,
        partner_id=row.partner_id,
        partner_name=row.partner_name,
        period=row.period,
        currency=row.currency,
        lines=lines,
        total=row.total,
        amount_payable=row.amount_payable,
        amount_paid=row.amount_paid,
        status=row.status,
        carried_to=row.carried_to,
        issued_at=row.issued_at,
    )


async def statement_data(repo: PartnerRepository, row: StatementRow) -> StatementData:
    """A statement with its lines (the carried totals first, then the ledger entries)."""
    entries = await repo.statement_entries(row.tenant_id, row.statement_id)
    carried = await repo.carried_into(row.tenant_id, row.statement_id)
    return statement_view(row, entries, carried)
