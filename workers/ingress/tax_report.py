"""Tax report API: ``GET /v1/tax/report?from=…&to=…&format=json|csv`` (docs/taxes.md).

Every finalized invoice and credit note of the caller's tenant in [from, to), one row per
document and rate, and (JSON) the totals per currency, rate and tax status
(``workers/invoicing/tax_report.py`` documents the columns). The period is at most
``MAX_PERIOD_DAYS`` (368: any calendar year, whatever the offsets of its ends).

The answer streams, a page of documents at a time, each page read in its own short
transaction: a big tenant's year is never held in memory. The first page is read before
the answer starts (PostgreSQL down: 503); a failure after that cuts the connection, and the
body is visibly incomplete (JSON that does not parse, a CSV whose last line lacks its CRLF).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from schemas.tax_report import MAX_PERIOD_DAYS, TaxReport
from workers import invoicing
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.fields import Instant
from workers.ingress.problems import invalid

router = APIRouter(prefix="/v1", tags=["taxes"])

MEDIA = {"json": "application/json", "csv": "text/csv; charset=utf-8"}
_CSV_SCHEMA: dict[str, Any] = {
    "type": "string",
    "description": "A header row of the column names, then one row per document and rate "
    "(RFC 4180, CRLF); no totals",
}


def check_period(start: datetime, end: datetime) -> None:
    """422 naming ``to`` unless ``start`` < ``end`` and the period is short enough."""
    if start >= end:
        raise invalid("to must be after from", [{"field": "to", "reason": "must be after from"}])
    if end - start > timedelta(days=MAX_PERIOD_DAYS):
        reason = f"the period may be at most {MAX_PERIOD_DAYS} days"
        raise invalid(f"to: {reason}", [{"field": "to", "reason": reason}])


@router.get(
    "/tax/report",
    summary="The tax report of a period: every finalized invoice and credit note by rate",
    response_model=None,
    responses={
        200: {
            "model": TaxReport,
            "description": "The rows and their totals (JSON), or the rows (CSV), by date",
            "content": {"text/csv": {"schema": _CSV_SCHEMA}},
        }
    },
)
async def tax_report(
    st: State,
    tx: Unit,
    tenant_id: Tenant,
    from_: Annotated[Instant, Query(alias="from", description="Inclusive (ISO 8601)")],
    to: Annotated[
        Instant, Query(description=f"Exclusive; at most {MAX_PERIOD_DAYS} days after from")
    ],
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
) -> StreamingResponse:
    """Invoices by ``finalized_at``, credit notes by ``issued_at``; an invoice or a note
    voided in the period is reversed on the day it was voided (``invoice_void``,
    ``credit_note_void``). Amounts in minor units, each with a ``*_major`` decimal string;
    credit notes are negative."""
    check_period(from_, to)
    first, cursor = await invoicing.tax_report_page(tx, tenant_id, from_, to)
    encoder = invoicing.TaxReportEncoder(format, from_, to)

    async def body() -> AsyncIterator[str]:
        yield encoder.head() + encoder.rows(first)
        after = cursor
        while after is not None:
            async with st.jobs.transaction("ingress") as page_tx:
                rows, after = await invoicing.tax_report_page(page_tx, tenant_id, from_, to, after)
            yield encoder.rows(rows)
        yield encoder.tail()

    return StreamingResponse(body(), media_type=MEDIA[format])
