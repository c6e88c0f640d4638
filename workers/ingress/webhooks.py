"""The ``/v1/webhooks`` API: endpoints (commands, 202), their secret, messages and attempts.

Writes publish a command on ``billstream.commands.webhooks.v1`` and answer 202 with the
command id (outcome at ``/v1/commands/{id}``); creating an endpoint also answers its id.
What can be decided without state is refused here with a 422 naming the field: URL
scheme, credentials, unusual IP spellings, destinations that resolve to private
addresses, the event-type filter syntax. Reads come from PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from schemas import topics
from schemas.envelope import CloudEvent
from schemas.topics import partition_key
from schemas.webhooks import (
    ENDPOINT_ID_PATTERN,
    MESSAGE_ID_PATTERN,
    CreateEndpoint,
    CreateEndpointData,
    DeleteEndpoint,
    EndpointFormat,
    EndpointPatch,
    EndpointRef,
    EndpointSpec,
    MessageRef,
    RecoverData,
    RecoverMessages,
    ResendMessage,
    RotateSecret,
    RotateSecretData,
    UpdateEndpoint,
    UpdateEndpointData,
    new_endpoint_id,
)
from storage.webhooks import WebhookRepository
from workers import webhooks
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.fields import Instant, OverlapSeconds
from workers.ingress.problems import Problem, invalid
from workers.ingress.routes import envelope, submit
from workers.runtime import Tx

router = APIRouter(prefix="/v1", tags=["webhooks"])


EndpointIdPath = Annotated[str, Path(pattern=ENDPOINT_ID_PATTERN)]
MessageIdPath = Annotated[str, Path(pattern=MESSAGE_ID_PATTERN)]


class WebhookCommandAccepted(BaseModel):
    command_id: str
    status: Literal["pending"]
    status_url: str
    endpoint_id: str


class EndpointView(BaseModel):
    id: str
    url: str
    description: str
    event_types: list[str]
    rate_limit_per_s: int | None
    ordered: bool
    format: EndpointFormat = Field(
        description="standard: the signed CloudEvent JSON; slack: a Slack message."
    )
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


class SecretView(BaseModel):
    key: str = Field(description="The current signing secret (whsec_…).")
    previous_key: str | None = Field(
        default=None, description="The previous secret while it still signs (rotation overlap)."
    )
    previous_key_expires_at: datetime | None = None


class MessageOut(BaseModel):
    id: str = Field(description="The webhook-id header: stable across retries.")
    endpoint_id: str
    event_id: str
    event_type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_response_status: int | None
    created_at: datetime
    finished_at: datetime | None


class MessagePage(BaseModel):
    data: list[MessageOut]
    next_before: int | None = Field(
        description="Pass as ?before= for the next (older) page; null on the last page."
    )


class AttemptOut(BaseModel):
    id: int
    message_id: str
    endpoint_id: str
    attempted_at: datetime
    status: Literal["succeeded", "failed"]
    response_status: int | None
    response_body: str | None = Field(description="The first 2 KiB of the response body.")
    latency_ms: int
    error: str | None


class RotateIn(BaseModel):
    model_config = {"extra": "forbid"}

    overlap_s: OverlapSeconds | None = Field(
        default=None,
        description="How long the previous secret keeps signing (default: server setting).",
    )


class RecoverIn(BaseModel):
    model_config = {"extra": "forbid"}

    since: Instant = Field(description="Every failed message created since then.")


async def _check_url(st: State, url: str) -> None:
    try:
        await webhooks.check_endpoint_url(url, st.settings.webhook_allowed_networks)
    except webhooks.UnsafeUrl as e:
        raise invalid(f"url: {e.message}", [{"field": "url", "reason": e.message}]) from None


async def _submit(
    request: Request,
    st: State,
    tenant_id: str,
    endpoint_id: str,
    command: CloudEvent,
) -> Response:
    return await submit(
        request,
        st,
        tenant_id,
        command,
        topic=topics.COMMANDS_WEBHOOKS,
        key=partition_key(tenant_id, endpoint_id),
        extra={"endpoint_id": endpoint_id},
    )


# --- writes --------------------------------------------------------------------------

ACCEPTED: dict[str, Any] = {
    "status_code": 202,
    "response_model": WebhookCommandAccepted,
}


@router.post("/webhooks/endpoints", summary="Register a webhook endpoint (command)", **ACCEPTED)
async def create_endpoint(
    request: Request, spec: EndpointSpec, st: State, tenant_id: Tenant
) -> Response:
    """Answers 202 with the new endpoint's id and the command id. The signing secret is
    generated by the webhooks worker: read it at ``GET …/endpoints/{id}/secret`` once the
    command succeeded."""
    await _check_url(st, spec.url)
    # a retried request with the same Idempotency-Key gets the first answer (and id)
    endpoint_id = new_endpoint_id()
    command = CreateEndpoint(
        data=CreateEndpointData(**spec.model_dump(), endpoint_id=endpoint_id),
        **envelope(request, tenant_id, endpoint_id),
    )
    return await _submit(request, st, tenant_id, endpoint_id, command)


async def _update(
    request: Request, st: State, tenant_id: str, endpoint_id: str, patch: EndpointPatch
) -> Response:
    if patch.url is not None:
        await _check_url(st, patch.url)
    command = UpdateEndpoint(
        data=UpdateEndpointData(**patch.model_dump(exclude_none=True), endpoint_id=endpoint_id),
        **envelope(request, tenant_id, endpoint_id),
    )
    return await _submit(request, st, tenant_id, endpoint_id, command)


@router.patch(
    "/webhooks/endpoints/{endpoint_id}", summary="Change a webhook endpoint (command)", **ACCEPTED
)
async def update_endpoint(
    request: Request,
    endpoint_id: EndpointIdPath,
    patch: EndpointPatch,
    st: State,
    tenant_id: Tenant,
) -> Response:
    """Absent or null fields stay as they are; ``rate_limit_per_s: 0`` removes the limit."""
    if not patch.model_dump(exclude_none=True):
        raise invalid("nothing to change", [{"field": "body", "reason": "no field is set"}])
    return await _update(request, st, tenant_id, endpoint_id, patch)


@router.post(
    "/webhooks/endpoints/{endpoint_id}/enable",
    summary="Enable an endpoint; delivery resumes (command)",
    **ACCEPTED,
)
async def enable_endpoint(
    request: Request, endpoint_id: EndpointIdPath, st: State, tenant_id: Tenant
) -> Response:
    return await _update(request, st, tenant_id, endpoint_id, EndpointPatch(enabled=True))


@router.post(
    "/webhooks/endpoints/{endpoint_id}/disable",
    summary="Disable an endpoint; messages wait until it is enabled (command)",
    **ACCEPTED,
)
async def disable_endpoint(
    request: Request, endpoint_id: EndpointIdPath, st: State, tenant_id: Tenant
) -> Response:
    return await _update(request, st, tenant_id, endpoint_id, EndpointPatch(enabled=False))


@router.delete(
    "/webhooks/endpoints/{endpoint_id}",
    summary="Delete an endpoint with its messages and attempts (command)",
    **ACCEPTED,
)
async def delete_endpoint(
    request: Request, endpoint_id: EndpointIdPath, st: State, tenant_id: Tenant
) -> Response:
    command = DeleteEndpoint(
        data=EndpointRef(endpoint_id=endpoint_id), **envelope(request, tenant_id, endpoint_id)
    )
    return await _submit(request, st, tenant_id, endpoint_id, command)


@router.post(
    "/webhooks/endpoints/{endpoint_id}/secret/rotate",
    summary="Rotate the signing secret (command)",
    **ACCEPTED,
)
async def rotate_secret(
    request: Request,
    endpoint_id: EndpointIdPath,
    st: State,
    tenant_id: Tenant,
    options: Annotated[RotateIn | None, Body()] = None,
) -> Response:
    """A new secret signs from now on; the previous one signs too (both signatures in
    ``webhook-signature``) until the overlap ends."""
    options = options or RotateIn()
    command = RotateSecret(
        data=RotateSecretData(endpoint_id=endpoint_id, overlap_s=options.overlap_s),
        **envelope(request, tenant_id, endpoint_id),
    )
    return await _submit(request, st, tenant_id, endpoint_id, command)


@router.post(
    "/webhooks/endpoints/{endpoint_id}/messages/{message_id}/resend",
    summary="Send one message again, same webhook-id (command)",
    **ACCEPTED,
)
async def resend_message(
    request: Request,
    endpoint_id: EndpointIdPath,
    message_id: MessageIdPath,
    st: State,
    tenant_id: Tenant,
) -> Response:
    command = ResendMessage(
        data=MessageRef(endpoint_id=endpoint_id, message_id=message_id),
        **envelope(request, tenant_id, endpoint_id),
    )
    return await _submit(request, st, tenant_id, endpoint_id, command)


@router.post(
    "/webhooks/endpoints/{endpoint_id}/recover",
    summary="Send again every failed message since a time (command)",
    **ACCEPTED,
)
async def recover_messages(
    request: Request,
    endpoint_id: EndpointIdPath,
    options: RecoverIn,
    st: State,
    tenant_id: Tenant,
) -> Response:
    command = RecoverMessages(
        data=RecoverData(endpoint_id=endpoint_id, since=options.since),
        **envelope(request, tenant_id, endpoint_id),
    )
    return await _submit(request, st, tenant_id, endpoint_id, command)


# --- reads ---------------------------------------------------------------------------


def _endpoint_view(e: webhooks.EndpointDef) -> EndpointView:
    return EndpointView.model_validate(e, from_attributes=True)


async def _endpoint(tx: Tx, tenant_id: str, endpoint_id: str) -> webhooks.EndpointDef:
    endpoint = await tx.repo(WebhookRepository).get(tenant_id, endpoint_id)
    if endpoint is None:
        raise Problem(404, "not_found", "No such endpoint", f"no webhook endpoint {endpoint_id}")
    return endpoint


@router.get(
    "/webhooks/endpoints", response_model=list[EndpointView], summary="List webhook endpoints"
)
async def list_endpoints(tx: Unit, tenant_id: Tenant) -> list[EndpointView]:
    return [_endpoint_view(e) for e in await tx.repo(WebhookRepository).of_tenant(tenant_id)]


@router.get(
    "/webhooks/endpoints/{endpoint_id}",
    response_model=EndpointView,
    summary="One webhook endpoint",
)
async def get_endpoint(endpoint_id: EndpointIdPath, tx: Unit, tenant_id: Tenant) -> EndpointView:
    return _endpoint_view(await _endpoint(tx, tenant_id, endpoint_id))


@router.get(
    "/webhooks/endpoints/{endpoint_id}/secret",
    response_model=SecretView,
    summary="The endpoint's signing secret",
)
async def get_secret(endpoint_id: EndpointIdPath, tx: Unit, tenant_id: Tenant) -> Response:
    secrets = await tx.repo(WebhookRepository).secrets(tenant_id, endpoint_id)
    if secrets is None:
        raise Problem(404, "not_found", "No such endpoint", f"no webhook endpoint {endpoint_id}")
    view = SecretView(key=secrets.secret)
    expires = secrets.previous_secret_expires_at
    if secrets.previous_secret is not None and expires is not None:
        view = SecretView(
            key=secrets.secret,
            previous_key=secrets.previous_secret,
            previous_key_expires_at=expires,
        )
    return JSONResponse(view.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


def _message_out(m: webhooks.MessageView) -> MessageOut:
    return MessageOut.model_validate(m, from_attributes=True)


def _attempt_out(a: webhooks.AttemptView) -> AttemptOut:
    return AttemptOut.model_validate(a, from_attributes=True)


@router.get(
    "/webhooks/endpoints/{endpoint_id}/messages",
    response_model=MessagePage,
    summary="An endpoint's messages, newest first",
)
async def list_messages(
    endpoint_id: EndpointIdPath,
    tx: Unit,
    tenant_id: Tenant,
    status: Annotated[Literal["pending", "succeeded", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[int | None, Query(description="next_before of the previous page")] = None,
) -> MessagePage:
    await _endpoint(tx, tenant_id, endpoint_id)
    rows = await tx.repo(WebhookRepository).messages(
        tenant_id, endpoint_id, status=status, limit=limit, before_seq=before
    )
    return MessagePage(
        data=[_message_out(m) for _, m in rows],
        next_before=rows[-1][0] if len(rows) == limit else None,
    )


@router.get(
    "/webhooks/endpoints/{endpoint_id}/messages/{message_id}",
    response_model=MessageOut,
    summary="One message",
)
async def get_message(
    endpoint_id: EndpointIdPath, message_id: MessageIdPath, tx: Unit, tenant_id: Tenant
) -> MessageOut:
    m = await tx.repo(WebhookRepository).message(tenant_id, endpoint_id, message_id)
    if m is None:
        raise Problem(404, "not_found", "No such message", f"no message {message_id}")
    return _message_out(m)


@router.get(
    "/webhooks/endpoints/{endpoint_id}/messages/{message_id}/attempts",
    response_model=list[AttemptOut],
    summary="A message's attempts, newest first",
)
async def list_message_attempts(
    endpoint_id: EndpointIdPath,
    message_id: MessageIdPath,
    tx: Unit,
    tenant_id: Tenant,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[AttemptOut]:
    if await tx.repo(WebhookRepository).message(tenant_id, endpoint_id, message_id) is None:
        raise Problem(404, "not_found", "No such message", f"no message {message_id}")
    rows = await tx.repo(WebhookRepository).attempts(
        tenant_id, endpoint_id, message_id=message_id, limit=limit
    )
    return [_attempt_out(a) for a in rows]


@router.get(
    "/webhooks/endpoints/{endpoint_id}/attempts",
    response_model=list[AttemptOut],
    summary="An endpoint's attempts, newest first",
)
async def list_endpoint_attempts(
    endpoint_id: EndpointIdPath,
    tx: Unit,
    tenant_id: Tenant,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[int | None, Query(description="an attempt id: older ones")] = None,
) -> list[AttemptOut]:
    await _endpoint(tx, tenant_id, endpoint_id)
    rows = await tx.repo(WebhookRepository).attempts(
        tenant_id, endpoint_id, limit=limit, before_id=before
    )
    return [_attempt_out(a) for a in rows]
