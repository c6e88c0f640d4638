"""The webhooks commands: one handler per command type (``COMMANDS``).

A handler is ``f(command, tx, ctx) -> result``: it changes endpoints and messages through
the repository, emits the context's events with ``tx.emit`` and returns the command's
result (``endpoint_id`` first). A ``PermanentError`` fails the command (``tx.command``
rolls its effects back and publishes none of its events)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from schemas import topics
from schemas.envelope import CloudEvent
from schemas.topics import partition_key
from schemas.webhooks import (
    CreateEndpoint,
    DeleteEndpoint,
    RecoverMessages,
    ResendMessage,
    RotateSecret,
    UpdateEndpoint,
)
from storage.webhooks import WebhookRepository
from workers.runtime import Tx
from workers.webhooks import service, signing, ssrf
from workers.webhooks.domain import Clock
from workers.webhooks.errors import EndpointNotFound, MessageNotFound


@dataclass
class Context:
    """What the handlers need besides the transaction: time, the SSRF policy, the default
    secret overlap, and a way to wake the dispatcher once new or newly due messages are
    committed."""

    clock: Clock
    policy: ssrf.Policy
    secret_overlap: timedelta
    wake: Callable[[], None]


Result = dict[str, Any]
Handler = Callable[[Any, Tx, Context], Awaitable[Result]]


def _emit(tx: Tx, endpoint_id: str, *events: CloudEvent) -> None:
    for e in events:
        tx.emit(e, topic=topics.EVENTS_WEBHOOKS, key=partition_key(e.tenantid, endpoint_id))


def _no_endpoint(endpoint_id: str) -> EndpointNotFound:
    return EndpointNotFound(f"no webhook endpoint {endpoint_id}", field="endpoint_id")


async def create_endpoint(command: CreateEndpoint, tx: Tx, ctx: Context) -> Result:
    """A new endpoint with a generated secret; a redelivered create is a no-op, the same id
    for another definition a conflict."""
    endpoint_id = command.data.endpoint_id
    await ssrf.check_url(command.data.url, ctx.policy)
    repo = tx.repo(WebhookRepository)
    wanted = service.new_endpoint(command)
    existing = await repo.add_endpoint(wanted, signing.generate_secret(), ctx.clock())
    if existing is not None:
        service.ensure_same_definition(existing, wanted)
    else:
        created = await repo.get(command.tenantid, endpoint_id)
        assert created is not None
        _emit(tx, endpoint_id, service.endpoint_created(command, created))
    return {"endpoint_id": endpoint_id}


async def update_endpoint(command: UpdateEndpoint, tx: Tx, ctx: Context) -> Result:
    """Changes the fields the patch sets; enabling an endpoint makes its pending messages
    due again."""
    endpoint_id = command.data.endpoint_id
    if command.data.url is not None:
        await ssrf.check_url(command.data.url, ctx.policy)
    changed = await tx.repo(WebhookRepository).update(
        command.tenantid, endpoint_id, service.changes(command.data), ctx.clock()
    )
    if changed is None:
        raise _no_endpoint(endpoint_id)
    before, after = changed
    _emit(tx, endpoint_id, *service.update_events(command, before, after))
    if after.enabled and not before.enabled:
        tx.after_commit(ctx.wake)  # its pending messages are due again
    return {"endpoint_id": endpoint_id}


async def rotate_secret(command: RotateSecret, tx: Tx, ctx: Context) -> Result:
    """A new secret signs from now on, the previous one too until the overlap ends."""
    endpoint_id = command.data.endpoint_id
    overlap = (
        timedelta(seconds=command.data.overlap_s)
        if command.data.overlap_s is not None
        else ctx.secret_overlap
    )
    expires = ctx.clock() + overlap
    if not await tx.repo(WebhookRepository).rotate_secret(
        command.tenantid, endpoint_id, signing.generate_secret(), expires
    ):
        raise _no_endpoint(endpoint_id)
    _emit(tx, endpoint_id, service.secret_rotated(command, endpoint_id, expires))
    return {"endpoint_id": endpoint_id, "previous_secret_expires_at": expires.isoformat()}


async def delete_endpoint(command: DeleteEndpoint, tx: Tx, ctx: Context) -> Result:
    """The endpoint goes with its messages and attempts."""
    endpoint_id = command.data.endpoint_id
    if not await tx.repo(WebhookRepository).delete(command.tenantid, endpoint_id):
        raise _no_endpoint(endpoint_id)
    _emit(tx, endpoint_id, service.endpoint_deleted(command, endpoint_id))
    return {"endpoint_id": endpoint_id}


async def resend_message(command: ResendMessage, tx: Tx, ctx: Context) -> Result:
    """One message is due now again, with a fresh retry schedule (same webhook-id)."""
    endpoint_id = command.data.endpoint_id
    repo = tx.repo(WebhookRepository)
    if await repo.get(command.tenantid, endpoint_id) is None:
        raise _no_endpoint(endpoint_id)
    n = await repo.reschedule(
        command.tenantid, endpoint_id, ctx.clock(), message_id=command.data.message_id
    )
    if n == 0:
        raise MessageNotFound(
            f"endpoint {endpoint_id} has no message {command.data.message_id}",
            field="message_id",
        )
    tx.after_commit(ctx.wake)
    return {"endpoint_id": endpoint_id, "message_id": command.data.message_id}


async def recover_messages(command: RecoverMessages, tx: Tx, ctx: Context) -> Result:
    """Every failed message created since a time is due now again."""
    endpoint_id = command.data.endpoint_id
    repo = tx.repo(WebhookRepository)
    if await repo.get(command.tenantid, endpoint_id) is None:
        raise _no_endpoint(endpoint_id)
    n = await repo.reschedule(
        command.tenantid, endpoint_id, ctx.clock(), failed_since=command.data.since
    )
    tx.after_commit(ctx.wake)
    return {"endpoint_id": endpoint_id, "recovered": n}


COMMANDS: dict[type[CloudEvent], Handler] = {
    CreateEndpoint: create_endpoint,
    UpdateEndpoint: update_endpoint,
    RotateSecret: rotate_secret,
    DeleteEndpoint: delete_endpoint,
    ResendMessage: resend_message,
    RecoverMessages: recover_messages,
}
