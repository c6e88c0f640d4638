"""``/v1/integrations/pos``: point-of-sale receipts in, per-source mappings to usage."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel

from schemas import topics
from schemas.pos import (
    POS_SOURCE_PATTERN,
    PosMappingData,
    PosMappingSpec,
    PosReceiptData,
    PosReceiptRecorded,
    SetPosMapping,
)
from storage.pos import PosMappingRepository
from workers.ingress.deps import (
    State,
    Tenant,
    Unit,
    correlation_id,
    idempotent,
    parse_json,
    read_body,
)
from workers.ingress.problems import Problem
from workers.ingress.routes import INGRESS_SOURCE, CommandAccepted, submit
from workers.pos import Adapter, AdapterError, format_of, formats, usage_source
from workers.runtime.ratelimit import retry_after

router = APIRouter(prefix="/v1/integrations/pos", tags=["POS integration"])

SourcePath = Annotated[str, Path(pattern=POS_SOURCE_PATTERN, description="A POS format.")]


class ReceiptsAccepted(BaseModel):
    accepted: int
    receipts: list[str]


class SourceView(BaseModel):
    source: str
    description: str


def _adapter(source: str) -> Adapter:
    adapter = format_of(source)
    if adapter is None:
        known = ", ".join(sorted(formats()))
        raise Problem(
            404, "unknown_pos_source", "Unknown POS source", f"no POS format {source!r}; "
            f"known: {known}"
        )  # fmt: skip
    return adapter


@router.get("", response_model=list[SourceView], summary="The POS formats billstream reads")
async def list_sources(tenant_id: Tenant) -> list[SourceView]:
    found = formats().values()
    return [SourceView(source=a.name, description=a.description) for a in found]


@router.post(
    "/{source}/transactions",
    status_code=202,
    response_model=ReceiptsAccepted,
    summary="Ingest a batch of point-of-sale receipts",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "Receipts in the source's format; for ``generic``: "
            '``{"receipts": [...]}`` or a JSON array of receipts.',
            "content": {"application/json": {"schema": {"type": ["object", "array"]}}},
        }
    },
)
async def ingest_receipts(
    source: SourcePath, request: Request, st: State, tenant_id: Tenant
) -> Response:
    """Receipts in the source's format (``generic``: see ``GET /v1/integrations/pos``);
    up to ``BILLSTREAM_MAX_BATCH_EVENTS`` per request. Any invalid receipt refuses the
    batch (422 naming the field). 202 once the broker acknowledged every receipt. A receipt
    sent again (same source and id) is applied once. The source's mapping turns them into
    usage events (``PUT /v1/integrations/pos/{source}/mapping``)."""
    adapter = _adapter(source)
    body = await read_body(request, st.settings.max_request_bytes)
    try:
        receipts = adapter.parse(parse_json(body))
    except AdapterError as e:
        raise Problem(
            422, "validation", "Invalid receipts; nothing was accepted", e.message,
            errors=e.errors,
        ) from None  # fmt: skip
    if not receipts:
        raise Problem(422, "validation", "The batch is empty", "send at least one receipt")
    if len(receipts) > st.settings.max_batch_events:
        raise Problem(
            413, "too_many_receipts", "Too many receipts",
            f"{len(receipts)} receipts; at most {st.settings.max_batch_events} per request",
        )  # fmt: skip
    wait = st.limiter.take(tenant_id, len(receipts), st.settings.rate_limit_events_per_s)
    if wait:
        raise Problem(
            429, "rate_limited", "Too many requests", "the tenant's ingest rate limit is exceeded",
            headers={"Retry-After": retry_after(wait)},
        )  # fmt: skip
    correlation = correlation_id(request)
    events = [
        PosReceiptRecorded(
            id=r.receipt_id,
            source=usage_source(source),
            subject=r.location,
            time=r.time,
            tenantid=tenant_id,
            correlationid=correlation,
            data=PosReceiptData.model_validate({**r.model_dump(), "source": source}),
        )
        for r in receipts
    ]

    async def publish() -> tuple[int, dict[str, Any]]:
        messages = [
            (topics.partition_key(tenant_id, e.subject).encode(), e.to_json()) for e in events
        ]
        await st.publisher.publish(topics.INTEGRATIONS_POS, messages)
        return 202, {"accepted": len(events), "receipts": [e.id for e in events]}

    return await idempotent(request, st, tenant_id, body, publish)


@router.put(
    "/{source}/mapping",
    status_code=202,
    response_model=CommandAccepted,
    summary="Set how a POS source's receipts become usage (asynchronous command)",
)
async def set_mapping(
    source: SourcePath, spec: PosMappingSpec, request: Request, st: State, tenant_id: Tenant
) -> Response:
    """Publishes a ``SetPosMapping`` command (create or replace). Receipts processed after
    it succeeds use it; a receipt that arrived before any mapping is dead-lettered
    (``no_pos_mapping``) and can be redriven (``billstream dlq redrive``)."""
    _adapter(source)
    command = SetPosMapping(
        source=INGRESS_SOURCE,
        tenantid=tenant_id,
        subject=source,
        data=PosMappingData.model_validate({**spec.model_dump(), "source": source}),
        correlationid=correlation_id(request),
    )
    return await submit(request, st, tenant_id, command, topic=topics.COMMANDS_POS, key=tenant_id)


@router.get("/{source}/mapping", response_model=PosMappingSpec, summary="A POS source's mapping")
async def get_mapping(source: SourcePath, tx: Unit, tenant_id: Tenant) -> PosMappingSpec:
    _adapter(source)
    raw = await tx.repo(PosMappingRepository).get(tenant_id, source)
    if raw is None:
        raise Problem(404, "not_found", "No mapping", f"no mapping for POS source {source!r}")
    return PosMappingSpec.model_validate(raw)
