"""The ``/v1`` API. Writes publish and answer 202; reads come from the read models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from schemas import jsonexact, topics
from schemas.envelope import CloudEvent
from schemas.metering import CreateMeter, MeterSpec
from schemas.usage import UsageEvent, UsageEventIn
from storage.commands import CommandRepository
from storage.invoicing.hierarchy import HierarchyRepository
from storage.metering import MeterRepository, UsageRepository
from workers import invoicing
from workers.ingress.deps import (
    State,
    Tenant,
    Unit,
    correlation_id,
    idempotent,
    parse_json,
    read_body,
)
from workers.ingress.fields import Instant
from workers.ingress.problems import Problem, invalid, not_found, validation_errors
from workers.metering import MeterDef
from workers.runtime.ratelimit import retry_after
from workers.runtime.tx import Tx

router = APIRouter(prefix="/v1")

MAX_SUBTREE = 5_000  # customers a subtree query reads at most (bounded work per request)

INGRESS_SOURCE = "billstream/ingress"
BATCH_MEDIA_TYPE = "application/cloudevents-batch+json"
SINGLE_MEDIA_TYPE = "application/cloudevents+json"

_events_in: TypeAdapter[list[UsageEventIn]] = TypeAdapter(list[UsageEventIn])


class Accepted(BaseModel):
    accepted: int


class CommandAccepted(BaseModel):
    command_id: str
    status: Literal["pending"]
    status_url: str


class CommandView(BaseModel):
    id: str
    type: str
    status: Literal["pending", "succeeded", "failed"]
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    created_at: datetime
    completed_at: datetime | None


class MeterView(MeterSpec):
    id: str


class UsageRow(BaseModel):
    window_start: datetime | None
    window_end: datetime | None
    subject: str | None
    group_by: dict[str, Any]
    value: float | None = Field(description="Written exactly (a JSON number, no rounding).")


class UsageView(BaseModel):
    meter: str
    aggregation: str
    from_: datetime | None = Field(alias="from")
    to: datetime | None
    window_size: Literal["hour", "day", "none"]
    data: list[UsageRow]


# --- usage ---------------------------------------------------------------------------


def _events_of(payload: Any, media_type: str) -> list[Any]:
    if media_type == SINGLE_MEDIA_TYPE:
        return [payload]
    if isinstance(payload, list):
        return payload
    if (
        isinstance(payload, dict)
        and set(payload) == {"events"}
        and isinstance(payload["events"], list)
    ):
        return list(payload["events"])
    raise invalid(
        'send {"events": [...]}, or a JSON array as application/cloudevents-batch+json',
        [{"field": "events", "reason": "expected a list of events"}],
    )


@router.post(
    "/events",
    status_code=202,
    response_model=Accepted,
    summary="Ingest a batch of usage events (CloudEvents)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "events": {
                                "type": "array",
                                "items": UsageEventIn.model_json_schema(),
                                "maxItems": 1000,
                            }
                        },
                        "required": ["events"],
                    }
                },
                BATCH_MEDIA_TYPE: {
                    "schema": {"type": "array", "items": UsageEventIn.model_json_schema()}
                },
            },
        }
    },
)
async def ingest_events(request: Request, st: State, tenant_id: Tenant) -> Response:
    """Accepts up to 1,000 events (1 MiB). 202 only once the broker acknowledged every
    event; any invalid event refuses the whole batch (422, naming index, field and reason)
    and nothing is published. Re-sending is safe: ``(source, id)`` is counted once."""
    body = await read_body(request, st.settings.max_request_bytes)
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    raw_events = _events_of(parse_json(body), media_type)
    if not raw_events:
        raise invalid(
            "the batch is empty",
            [{"field": "events", "reason": "at least one event"}],
        )
    if len(raw_events) > st.settings.max_batch_events:
        raise Problem(
            413,
            "too_many_events",
            "Too many events",
            f"{len(raw_events)} events; at most {st.settings.max_batch_events} per request",
        )
    try:
        events = _events_in.validate_python(raw_events)
    except ValidationError as e:
        errors = [
            {"index": err["loc"][0], **named}
            for err, named in zip(
                e.errors(), validation_errors(e.errors(), prefix="events"), strict=True
            )
        ]
    else:
        errors = []
    if errors:
        raise Problem(
            422,
            "validation",
            "Invalid events; nothing was accepted",
            f"{len({e['index'] for e in errors})} of {len(raw_events)} events are invalid",
            errors=errors[:100],
        )
    wait = st.limiter.take(tenant_id, len(events), st.settings.rate_limit_events_per_s)
    if wait:
        raise Problem(
            429,
            "rate_limited",
            "Too many events",
            "the tenant's ingest rate limit is exceeded",
            headers={"Retry-After": retry_after(wait)},
        )

    async def publish() -> tuple[int, dict[str, Any]]:
        values = UsageEvent.encode_from_client(events, tenant_id)  # = from_client(…).to_json()
        messages = [
            (topics.partition_key(tenant_id, e.subject).encode(), value)
            for e, value in zip(events, values, strict=True)
        ]
        await st.publisher.publish(topics.USAGE, messages)
        return 202, {"accepted": len(events)}

    return await idempotent(request, st, tenant_id, body, publish)


# --- commands --------------------------------------------------------------------------


def envelope(request: Request, tenant_id: str, subject: str) -> dict[str, Any]:
    """The envelope attributes of a command the ingress sends for ``tenant_id``."""
    return {
        "source": INGRESS_SOURCE,
        "tenantid": tenant_id,
        "subject": subject,
        "correlationid": correlation_id(request),
    }


async def submit(
    request: Request,
    st: State,
    tenant_id: str,
    command: CloudEvent,
    *,
    topic: str,
    key: str,
    extra: dict[str, Any] | None = None,
) -> Response:
    """Accept a command: record it as pending and publish it (the pending row commits only
    if the broker acknowledged the command); 202 with its id and ``Location``. The request's
    own bytes fingerprint it for ``Idempotency-Key`` (not the command, which carries ids
    the ingress generated: a retry must match its first attempt); ``extra`` adds ids the
    caller needs now (e.g. a generated subscription id)."""

    async def accept() -> tuple[int, dict[str, Any]]:
        async with st.jobs.transaction("ingress") as tx:
            await tx.repo(CommandRepository).accept(
                tenant_id, command.id, command.type, command.subject
            )
            await st.publisher.publish(topic, [(key.encode(), command.to_json())])
        accepted = CommandAccepted(
            command_id=command.id, status="pending", status_url=f"/v1/commands/{command.id}"
        )
        return 202, accepted.model_dump() | (extra or {})

    response = await idempotent(request, st, tenant_id, await request.body(), accept)
    response.headers["Location"] = f"/v1/commands/{command.id}"
    return response


async def send_command(
    request: Request,
    st: State,
    tenant_id: str,
    command: type[CloudEvent],
    data: BaseModel,
    key: str,
    subject: str,
    extra: dict[str, Any] | None = None,
    *,
    topic: str,
) -> Response:
    """``submit`` a ``command`` carrying ``data``, enveloped for ``tenant_id`` and
    ``subject``, on ``topic`` under record key ``key``."""
    event = command(data=data, **envelope(request, tenant_id, subject))
    return await submit(request, st, tenant_id, event, topic=topic, key=key, extra=extra)


@router.post(
    "/meters",
    status_code=202,
    response_model=CommandAccepted,
    summary="Define a meter (asynchronous command)",
)
async def create_meter(request: Request, spec: MeterSpec, st: State, tenant_id: Tenant) -> Response:
    """Publishes a ``CreateMeter`` command. Follow ``status_url`` for the outcome:
    re-creating an identical meter succeeds; a different definition for an existing key fails."""
    command = CreateMeter(
        source=INGRESS_SOURCE,
        tenantid=tenant_id,
        subject=spec.key,
        data=spec,
        correlationid=correlation_id(request),
    )
    return await submit(
        request, st, tenant_id, command, topic=topics.COMMANDS_METERING, key=tenant_id
    )


@router.get("/commands/{command_id}", response_model=CommandView, summary="A command's outcome")
async def get_command(command_id: str, tx: Unit, tenant_id: Tenant) -> CommandView:
    row = await tx.repo(CommandRepository).get(tenant_id, command_id)
    if row is None:
        raise not_found("command", command_id)
    return CommandView.model_validate(row, from_attributes=True)


# --- meters and usage -------------------------------------------------------------------


def _view(m: MeterDef) -> MeterView:
    return MeterView.model_validate(m, from_attributes=True)


async def _meter(tx: Tx, tenant_id: str, key: str) -> MeterDef:
    meter = await tx.repo(MeterRepository).get(tenant_id, key)
    if meter is None:
        raise Problem(404, "not_found", "No such meter", f"no meter with key {key!r}")
    return meter


@router.get("/meters", response_model=list[MeterView], summary="List meters")
async def list_meters(tx: Unit, tenant_id: Tenant) -> list[MeterView]:
    return [_view(m) for m in await tx.repo(MeterRepository).of_tenant(tenant_id)]


@router.get("/meters/{key}", response_model=MeterView, summary="One meter")
async def get_meter(key: str, tx: Unit, tenant_id: Tenant) -> MeterView:
    return _view(await _meter(tx, tenant_id, key))


async def subtree_of(tx: Tx, tenant_id: str, external_id: str, field: str) -> list[str]:
    """``external_id`` and the external ids of every customer below it (docs/hierarchies.md);
    404 for an unknown customer, 422 naming ``field`` past ``MAX_SUBTREE`` customers."""
    tree = tx.repo(HierarchyRepository)
    if not await tree.customers(tenant_id, [external_id]):  # a read: no row lock
        raise not_found("customer", external_id)
    below = await tree.descendants(
        tenant_id, external_id, depth=invoicing.MAX_DEPTH, limit=MAX_SUBTREE, after=None
    )
    if len(below) + 1 > MAX_SUBTREE:
        raise invalid(
            f"the subtree of {external_id!r} has more than {MAX_SUBTREE:,} customers; query "
            "smaller subtrees",
            [{"field": field, "reason": f"at most {MAX_SUBTREE:,} customers in a subtree"}],
        )
    return [external_id, *(d.external_id for d in below)]


def _hour_aligned(name: str, t: datetime | None) -> None:
    utc = t.astimezone(UTC) if t is not None else None
    if utc is not None and (utc.minute or utc.second or utc.microsecond):
        raise invalid(
            f"{name} must be on an hour boundary (usage is kept in hourly buckets)",
            [{"field": name, "reason": "must be a whole hour, e.g. 2026-11-22T10:00:00Z"}],
        )


@router.get(
    "/meters/{key}/usage",
    summary="Aggregated usage of a meter",
    responses={200: {"model": UsageView, "description": "The usage, by window and group"}},
)
async def query_usage(
    key: str,
    tx: Unit,
    tenant_id: Tenant,
    subject: Annotated[list[str] | None, Query(description="Only these subjects.")] = None,
    from_: Annotated[
        Instant | None, Query(alias="from", description="Inclusive, whole hour.")
    ] = None,
    to: Annotated[Instant | None, Query(description="Exclusive, whole hour.")] = None,
    window_size: Annotated[Literal["hour", "day", "none"], Query()] = "none",
    group_by: Annotated[list[str] | None, Query(description="Group names, or 'subject'.")] = None,
    subtree: Annotated[
        bool,
        Query(
            description="With exactly one subject (a customer): the usage of that customer "
            "and of every customer below it, aggregated together (docs/hierarchies.md); "
            f"at most {MAX_SUBTREE:,} customers. With group_by=subject: one row per customer "
            "that has usage."
        ),
    ] = False,
) -> Response:
    """Exact values over [from, to) (UTC windows). Values are JSON numbers written exactly."""
    meter = await _meter(tx, tenant_id, key)
    if subtree and len(subject or []) != 1:
        raise invalid(
            "subtree=true needs exactly one subject: the customer at the top of the subtree",
            [
                {"field": "subject", "reason": "exactly one with subtree=true"},
                {"field": "subtree", "reason": "needs exactly one subject"},
            ],
        )
    _hour_aligned("from", from_)
    _hour_aligned("to", to)
    if from_ is not None and to is not None and from_ >= to:
        raise invalid(
            "from must be before to",
            [{"field": "to", "reason": "must be after from"}],
        )
    groups = group_by or []
    unknown = [g for g in groups if g != "subject" and g not in meter.group_by]
    if unknown:
        allowed = ", ".join(["subject", *meter.group_by]) or "subject"
        raise invalid(
            f"unknown group(s) {unknown}; this meter groups by: {allowed}",
            [{"field": "group_by", "reason": f"unknown group {g!r}"} for g in unknown],
        )
    subjects = subject or []
    if subtree:
        subjects = await subtree_of(tx, tenant_id, subjects[0], "subject")
    rows = await tx.repo(UsageRepository).query(
        meter, start=from_, end=to, subjects=subjects, window=window_size, group_by=groups
    )
    root = subjects[0] if subtree and "subject" not in groups else None
    payload = {
        "meter": meter.key,
        "aggregation": meter.aggregation,
        "from": from_.isoformat() if from_ else None,
        "to": to.isoformat() if to else None,
        "window_size": window_size,
        "data": [
            {
                "window_start": r.window_start.isoformat() if r.window_start else None,
                "window_end": r.window_end.isoformat() if r.window_end else None,
                "subject": root or r.subject,
                "group_by": r.groups,
                "value": r.value,
            }
            for r in rows
        ],
    }
    return Response(jsonexact.dumps_parsed(payload), media_type="application/json")
