"""Webhooks subscribers: fan-out of every event topic, and the webhook commands."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import ConfigDict, Field, TypeAdapter

from schemas import topics
from schemas.envelope import WIRE, CloudEvent
from schemas.webhooks import (
    CreateEndpoint,
    DeleteEndpoint,
    RecoverMessages,
    ResendMessage,
    RotateSecret,
    UpdateEndpoint,
    WebhooksCommand,
)
from storage.tenants import TenantRepository
from storage.webhooks import WebhookRepository
from workers.runtime import Batch, Message, Runtime, Tx
from workers.webhooks import service, signing, ssrf
from workers.webhooks.errors import EndpointNotFound, MessageNotFound
from workers.webhooks.service import Clock, RetryPolicy

COMMANDS_GROUP = "billstream.webhooks.commands"
FANOUT_GROUP_PREFIX = "billstream.webhooks.fanout"

_commands: TypeAdapter[WebhooksCommand] = TypeAdapter(WebhooksCommand)


class AnyEvent(CloudEvent):
    """Any event on an events topic: the envelope is read, ``data`` is not interpreted
    (the delivered body is the record's bytes, unchanged). Unknown extension attributes
    are tolerated: any CloudEvents producer may write to these topics."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    tenantid: str = Field(min_length=1, max_length=256)  # "*" etc.: skipped, not rejected


def decode_event(raw: bytes) -> AnyEvent:
    return AnyEvent.model_validate_json(raw, context=WIRE)


def event_topics() -> list[str]:
    """Every events topic, this context's own included (so ``webhook.endpoint_disabled``
    reaches other endpoints), computed so that a new context is picked up by itself."""
    return [t.name for t in topics.TOPICS if t.name.startswith("billstream.events.")]


def fanout_group(topic: str) -> str:
    """One consumer group per events topic (``billstream.webhooks.fanout.<context>``)."""
    return f"{FANOUT_GROUP_PREFIX}.{topic.split('.')[2]}"


@dataclass
class Context:
    """What the handlers need besides the transaction: time, randomness, SSRF policy,
    settings, and a way to wake the dispatcher once new messages are committed."""

    clock: Clock
    rng: random.Random
    policy: ssrf.Policy
    retry: RetryPolicy
    secret_overlap: timedelta
    wake: Callable[[], None]


def register(runtime: Runtime, ctx: Context) -> None:
    async def on_events(batch: Batch[AnyEvent], tx: Tx) -> None:
        """Turns every event into one message per matching enabled endpoint."""
        # events of no tenant (or of one that does not exist) have no endpoints: skipped
        # here rather than dead-lettered, the DLQ of another context's topic is not ours
        tenants = await tx.repo(TenantRepository).existing({m.event.tenantid for m in batch})
        repo = tx.repo(WebhookRepository)
        endpoints = await repo.enabled_filters(tenants)
        # only events some endpoint wants are claimed: high-volume types nobody subscribed
        # to (usage.totals_changed) cost no inbox row (message ids are idempotent anyway)
        wanted = service.wanted(
            [m for m in batch if m.event.tenantid in tenants],
            endpoints,
            lambda m: (m.event.tenantid, m.event.type),
        )
        fresh = await tx.claim(wanted)
        if not fresh:
            return
        refs = [
            service.EventRef(
                tenant_id=m.event.tenantid,
                id=m.event.id,
                source=m.event.source,
                type=m.event.type,
                subject=m.event.subject,
                payload=m.record.value,
            )
            for m in fresh
        ]
        messages = service.fan_out(refs, endpoints, ctx.clock())
        if messages:
            await repo.add_messages(messages)
            tx.after_commit(ctx.wake)

    for topic in event_topics():
        runtime.consumer(topic, group=fanout_group(topic), decode=decode_event)(on_events)

    @runtime.consumer(
        topics.COMMANDS_WEBHOOKS,
        group=COMMANDS_GROUP,
        decode=lambda raw: _commands.validate_json(raw, context=WIRE),
        commands=True,
    )
    async def on_command(batch: Batch[WebhooksCommand], tx: Tx) -> None:
        """Endpoint changes, secret rotation, resend and recovery."""
        for message in await tx.claim(batch):
            async with tx.command(message) as result:
                await apply(message, tx, ctx, result)


async def apply(
    message: Message[WebhooksCommand], tx: Tx, ctx: Context, result: dict[str, Any]
) -> None:
    command = message.event
    repo = tx.repo(WebhookRepository)
    now = ctx.clock()
    endpoint_id = command.data.endpoint_id
    result["endpoint_id"] = endpoint_id
    emitted: list[CloudEvent] = []
    if isinstance(command, CreateEndpoint):
        await ssrf.check_url(command.data.url, ctx.policy)
        wanted = service.new_endpoint(command)
        existing = await repo.add_endpoint(wanted, signing.generate_secret(), now)
        if existing is not None:
            service.ensure_same_definition(existing, wanted)
        else:
            created = await repo.get(command.tenantid, endpoint_id)
            assert created is not None
            emitted.append(service.endpoint_created(command, created))
    elif isinstance(command, UpdateEndpoint):
        if command.data.url is not None:
            await ssrf.check_url(command.data.url, ctx.policy)
        changed = await repo.update(
            command.tenantid, endpoint_id, service.changes(command.data), now
        )
        if changed is None:
            raise _no_endpoint(endpoint_id)
        emitted.extend(service.update_events(command, *changed))
        if changed[1].enabled and not changed[0].enabled:
            tx.after_commit(ctx.wake)  # its pending messages are due again
    elif isinstance(command, RotateSecret):
        overlap = (
            timedelta(seconds=command.data.overlap_s)
            if command.data.overlap_s is not None
            else ctx.secret_overlap
        )
        expires = now + overlap
        if not await repo.rotate_secret(
            command.tenantid, endpoint_id, signing.generate_secret(), expires
        ):
            raise _no_endpoint(endpoint_id)
        result["previous_secret_expires_at"] = expires.isoformat()
        emitted.append(service.secret_rotated(command, endpoint_id, expires))
    elif isinstance(command, DeleteEndpoint):
        if not await repo.delete(command.tenantid, endpoint_id):
            raise _no_endpoint(endpoint_id)
        emitted.append(service.endpoint_deleted(command, endpoint_id))
    elif isinstance(command, ResendMessage):
        if await repo.get(command.tenantid, endpoint_id) is None:
            raise _no_endpoint(endpoint_id)
        n = await repo.reschedule(
            command.tenantid, endpoint_id, now, message_id=command.data.message_id
        )
        if n == 0:
            raise MessageNotFound(
                f"endpoint {endpoint_id} has no message {command.data.message_id}",
                field="message_id",
            )
        result["message_id"] = command.data.message_id
        tx.after_commit(ctx.wake)
    elif isinstance(command, RecoverMessages):
        if await repo.get(command.tenantid, endpoint_id) is None:
            raise _no_endpoint(endpoint_id)
        n = await repo.reschedule(
            command.tenantid, endpoint_id, now, failed_since=command.data.since
        )
        result["recovered"] = n
        tx.after_commit(ctx.wake)
    for e in emitted:
        tx.emit(e, topic=topics.EVENTS_WEBHOOKS, key=service.event_key(e.tenantid, endpoint_id))


def _no_endpoint(endpoint_id: str) -> EndpointNotFound:
    return EndpointNotFound(f"no webhook endpoint {endpoint_id}", field="endpoint_id")
