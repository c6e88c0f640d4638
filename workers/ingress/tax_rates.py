"""Tax rates API (docs/taxes.md): versions of named tax rates.

``POST /v1/tax_rates`` becomes a ``CreateTaxRate`` command on
``billstream.commands.invoicing.v1`` (202 + command id), keyed by the tenant. Reads come from
PostgreSQL. The door refuses what it can check without state (422 naming the field: a float,
a percentage out of 0..100, a taxable-base factor that is not a fraction in (0, 1],
``effective_until`` not after ``effective_from``); what needs the other versions (an overlap,
inclusive unlike the others, a change of a used version) fails the command, naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import Field, ValidationError, model_validator

from schemas.bounds import ID_PATTERN
from schemas.envelope import new_id
from schemas.pricing import KEY_PATTERN
from schemas.taxes import CreateTaxRate, TaxRateData, TaxRateSpec
from storage.invoicing.taxes import TaxRateRepository, TaxRateRow
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.invoicing import send
from workers.ingress.problems import invalid, not_found
from workers.ingress.routes import CommandAccepted

router = APIRouter(prefix="/v1", tags=["taxes"])

IdPath = Annotated[str, Path(pattern=ID_PATTERN)]
_PENDING_HINT = " (if its create command is still pending, retry when it has succeeded)"
_ACCEPTED: dict[str, Any] = {"status_code": 202, "response_model": CommandAccepted}


def _refuse(field: str, message: str) -> None:
    raise invalid(f"{field}: {message}", [{"field": field, "reason": message}])


class TaxRateIn(TaxRateSpec):
    """A tax rate version as a request gives it: the id is optional."""

    id: str | None = Field(  # type: ignore[assignment]
        default=None, pattern=ID_PATTERN, description="This version's id; default: txr_…"
    )

    @model_validator(mode="after")
    def _window(self) -> TaxRateIn:  # checked by the route, naming effective_until
        return self


def _data(row: TaxRateRow) -> TaxRateData:
    fields = {f: getattr(row, f) for f in TaxRateSpec.model_fields}
    return TaxRateData(**fields, used=row.used_at is not None)


@router.post(
    "/tax_rates", summary="Create a tax rate version, or change one (command)", **_ACCEPTED
)
async def create_tax_rate(
    request: Request, body: TaxRateIn, st: State, tenant_id: Tenant
) -> Response:
    """Answers with the ``tax_rate_id`` at once. The same version again succeeds; an unused
    version may be changed by sending it again under its id; a used one only closed (its
    ``effective_until`` set). Versions of one name may not overlap and are all inclusive or
    all exclusive (else the command fails: ``conflict``, naming the field)."""
    if (
        body.effective_from is not None
        and body.effective_until is not None
        and body.effective_until <= body.effective_from
    ):
        _refuse("effective_until", "must be after effective_from")
    fields = dict(body) | {"id": body.id or f"txr_{new_id()}"}
    try:
        spec = TaxRateSpec(**fields)
    except ValidationError as e:  # every rule is checked above; never a 500
        _refuse("body", str(e.errors()[0]["msg"]))
        raise
    return await send(
        request, st, tenant_id, CreateTaxRate, spec, tenant_id, spec.id, {"tax_rate_id": spec.id}
    )


@router.get(
    "/tax_rates",
    response_model=list[TaxRateData],
    summary="List tax rate versions (by id)",
)
async def list_tax_rates(
    tx: Unit,
    tenant_id: Tenant,
    name: str | None = Query(None, pattern=KEY_PATTERN, description="Only this rate's versions"),
    limit: int = Query(100, ge=1, le=1000),
    after: str | None = Query(None, pattern=ID_PATTERN, description="The last id of a page"),
) -> list[TaxRateData]:
    rows = await tx.repo(TaxRateRepository).list_rates(
        tenant_id, name=name, limit=limit, after=after
    )
    return [_data(r) for r in rows]


@router.get("/tax_rates/{tax_rate_id}", response_model=TaxRateData, summary="One tax rate version")
async def get_tax_rate(tax_rate_id: IdPath, tx: Unit, tenant_id: Tenant) -> TaxRateData:
    row = await tx.repo(TaxRateRepository).rate(tenant_id, tax_rate_id)
    if row is None:
        raise not_found("tax rate", tax_rate_id, _PENDING_HINT)
    return _data(row)
