"""The tax report as the ingress and the CLI read it: one page of rows at a time
(``workers/invoicing/tax_report.py`` builds them; ``storage/invoicing/tax_report.py`` reads
the documents)."""

from __future__ import annotations

from datetime import datetime

from schemas.tax_report import TaxReportRow
from storage.invoicing import tax_report as store
from workers.invoicing.tax_report import Cursor, rows
from workers.runtime import Tx

#: documents per page (a page is one statement)
PAGE = 500


async def tax_report_page(
    tx: Tx,
    tenant_id: str,
    start: datetime,
    end: datetime,
    after: Cursor | None = None,
    limit: int = PAGE,
) -> tuple[list[TaxReportRow], Cursor | None]:
    """The rows of the next ``limit`` documents of [start, end) after ``after``, and the
    cursor to read on from (None: that was the last page)."""
    docs = await tx.repo(store.TaxReportRepository).page(tenant_id, start, end, after, limit)
    out = [r for d in docs for r in rows(d)]
    return out, (docs[-1].cursor if len(docs) == limit else None)
