"""``billstream tax report``: the tax report of one tenant and period, written as it is read
(a page of documents per transaction), to a file or stdout. The rows and totals are the
ones ``GET /v1/tax/report`` answers (workers/invoicing/tax_report.py documents them).

The tenant: ``--tenant``, or the only tenant there is. The period may be longer than the
API's (which answers at most a year and two days): a report streams whatever its length.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal, TextIO

from storage.invoicing.tax_report import TaxReportRepository
from workers import invoicing
from workers.ops.errors import OpsError, UsageError
from workers.runtime.database import database
from workers.settings import Settings


async def tenant_of(settings: Settings, tenant: str | None) -> str:
    """``tenant`` if it exists, else the only tenant there is; else an error."""
    async with (
        database(settings, pool_size=1) as jobs,
        jobs.transaction("ops.tax_report") as tx,
    ):
        repo = tx.repo(TaxReportRepository)
        if tenant is not None:
            if not await repo.tenant_exists(tenant):
                raise OpsError(f"no tenant {tenant!r}", option="--tenant")
            return tenant
        found = await repo.tenants(limit=2)
    if len(found) == 1:
        return found[0]
    if not found:
        raise OpsError("there is no tenant yet (billstream tenant create)")
    raise UsageError("there are several tenants: name one", option="--tenant")


async def write(
    settings: Settings,
    tenant: str,
    start: datetime,
    end: datetime,
    fmt: Literal["json", "csv"],
    out: TextIO,
    progress: Callable[[int], None] = lambda rows: None,
) -> int:
    """Write the report to ``out``; the number of rows written. ``progress`` is told the
    rows written so far after every page."""
    if start >= end:
        raise UsageError("must be after --from", option="--to")
    encoder = invoicing.TaxReportEncoder(fmt, start, end)
    out.write(encoder.head())
    async with database(settings, pool_size=1) as jobs:
        after = None
        while True:
            async with jobs.transaction("ops.tax_report") as tx:
                rows, after = await invoicing.tax_report_page(tx, tenant, start, end, after)
            out.write(encoder.rows(rows))
            progress(encoder.count)
            if after is None:
                break
    out.write(encoder.tail())
    return encoder.count
