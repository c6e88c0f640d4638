"""Tax rates as resources (docs/taxes.md): ``CreateTaxRate`` creates a version of a rate, or
changes one no invoice was finalized with; emits tax_rate.created or tax_rate.updated (keyed
by the tenant).

A name's versions are locked while one of them is written (finalizing reads them under a
share lock and marks what it used), so the checks below hold under any concurrency:

- versions of one name never overlap in time, and are all inclusive or all exclusive;
- a used version (``used_at`` set) is immutable but for its ``effective_until``, which may
  close it as long as every period already invoiced with it still starts before the end.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.taxes import CreateTaxRate, TaxRateCreated, TaxRateData, TaxRateSpec, TaxRateUpdated
from storage.invoicing.taxes import TaxRateRepository, TaxRateRow
from workers.invoicing import service
from workers.invoicing.base import Handler, Result, emit
from workers.invoicing.errors import Conflict
from workers.runtime import Tx

MAX_TAX_RATES = 1000  # versions per tenant: every finalization reads them all
_FIELDS = tuple(TaxRateSpec.model_fields)


def spec_of(row: TaxRateRow) -> TaxRateSpec:
    return TaxRateSpec.model_validate({f: getattr(row, f) for f in _FIELDS})


def tax_rate_data(row: TaxRateRow) -> TaxRateData:
    """A version as the API and the events show it."""
    return TaxRateData(**dict(spec_of(row)), used=row.used_at is not None)


def _when(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _window(v: TaxRateSpec | TaxRateRow) -> str:
    start = "since always" if v.effective_from is None else f"from {_when(v.effective_from)}"
    end = "with no end" if v.effective_until is None else f"until {_when(v.effective_until)}"
    return f"{start}, {end}"


def _overlap(a: TaxRateSpec | TaxRateRow, b: TaxRateSpec | TaxRateRow) -> bool:
    """Whether the windows [effective_from, effective_until) of ``a`` and ``b`` meet."""
    a_starts_before_b_ends = (
        a.effective_from is None
        or b.effective_until is None
        or a.effective_from < b.effective_until
    )
    b_starts_before_a_ends = (
        b.effective_from is None
        or a.effective_until is None
        or b.effective_from < a.effective_until
    )
    return a_starts_before_b_ends and b_starts_before_a_ends


def _check_siblings(spec: TaxRateSpec, others: list[TaxRateRow]) -> None:
    """``spec`` against the other versions of its name."""
    for o in others:
        if o.inclusive != spec.inclusive:
            kind = "inclusive" if o.inclusive else "exclusive"
            raise Conflict(
                f"tax rate {spec.name!r} is {kind} (version {o.id!r}); every version of a name "
                "is inclusive, or none is: give this rate another name",
                field="inclusive",
            )
    for o in others:
        if _overlap(spec, o):
            theirs, mine = _window(o), _window(spec)
            raise Conflict(
                f"version {o.id!r} of tax rate {spec.name!r} is in force {theirs}, overlapping "
                f"this one ({mine}); versions of one name may not overlap: close the other "
                "with effective_until first",
                field="effective_from",
            )


async def _check_used(tx: Tx, tenant: str, row: TaxRateRow, spec: TaxRateSpec) -> None:
    """A used version: only ``effective_until`` may change, and not to a time at or before
    the start of a period already invoiced with it."""
    old = spec_of(row)
    changed = [f for f in _FIELDS if getattr(old, f) != getattr(spec, f)]
    if [f for f in changed if f != "effective_until"]:
        raise Conflict(
            f"tax rate {row.id!r} is used by finalized invoices: create a new version with new "
            "effective dates (only its effective_until may still be set, to close it)",
            field=changed[0],
        )
    until = spec.effective_until
    last = await tx.repo(TaxRateRepository).last_period_taxed(tenant, row.id)
    if until is not None and last is not None and until <= last:
        raise Conflict(
            f"tax rate {row.id!r} taxed an invoiced period starting {_when(last)}; "
            "effective_until must be after it",
            field="effective_until",
        )


async def create_tax_rate(cmd: CreateTaxRate, tx: Tx) -> Result:
    """Creates a tax rate version, or changes one (see the module's rules); the same version
    again is a no-op. Nothing is written when it fails."""
    spec, tenant = cmd.data, cmd.tenantid
    repo = tx.repo(TaxRateRepository)
    versions = await repo.versions(tenant, spec.name, lock=True)
    row = next((v for v in versions if v.id == spec.id), None)
    if row is None:
        row = await repo.rate(tenant, spec.id, lock=True)
    result = {"tax_rate_id": spec.id, "name": spec.name}
    if row is not None:
        if row.name != spec.name:
            raise Conflict(
                f"tax rate {spec.id!r} is a version of {row.name!r}; a version keeps its name "
                "(create a new version under another id)",
                field="name",
            )
        if spec_of(row) == spec:
            return result
        if row.used_at is not None:
            await _check_used(tx, tenant, row, spec)
    elif await repo.count(tenant) >= MAX_TAX_RATES:
        raise Conflict(
            f"the tenant has {MAX_TAX_RATES} tax rate versions, the most it may have",
            field="id",
        )
    _check_siblings(spec, [v for v in versions if v.id != spec.id])
    await repo.upsert(tenant, spec.model_dump(), cmd.time)
    used = row is not None and row.used_at is not None
    data = TaxRateData(**dict(spec), used=used)
    cls = TaxRateCreated if row is None else TaxRateUpdated
    emit(tx, cls(data=data, source=service.SOURCE, subject=spec.id, **cmd.caused()))
    return result


COMMANDS: dict[type[Any], Handler] = {CreateTaxRate: create_tax_rate}
