"""Webhooks subscribers: fan-out of every event topic, and the webhook commands.

The handlers are module-level functions of (batch, tx, ctx); ``register`` binds them to the
worker's ``Context`` and subscribes them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import TypeAdapter

from schemas import groups, topics
from schemas.envelope import WIRE, AnyEvent, CloudEvent
from schemas.webhooks import WebhooksCommand
from storage.tenants import TenantRepository
from storage.webhooks import WebhookRepository
from workers.runtime import Batch, Runtime, Tx
from workers.webhooks import service
from workers.webhooks.commands import COMMANDS, Context
from workers.webhooks.domain import EventRef

E = TypeVar("E", bound=CloudEvent)

_commands: TypeAdapter[WebhooksCommand] = TypeAdapter(WebhooksCommand)


def decode_event(raw: bytes) -> AnyEvent:
    return AnyEvent.model_validate_json(raw, context=WIRE)


def decode_command(raw: bytes) -> WebhooksCommand:
    return _commands.validate_json(raw, context=WIRE)


def event_topics() -> list[str]:
    """Every events topic, this context's own included (so ``webhook.endpoint_disabled``
    reaches other endpoints), computed so that a new context is picked up by itself."""
    return [t.name for t in topics.TOPICS if t.name.startswith("billstream.events.")]


async def on_events(batch: Batch[AnyEvent], tx: Tx, ctx: Context) -> None:
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
        EventRef(
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


async def on_command(batch: Batch[WebhooksCommand], tx: Tx, ctx: Context) -> None:
    """Endpoint changes, secret rotation, resend and recovery."""
    for message in await tx.claim(batch):
        command = message.event
        async with tx.command(message) as result:
            result.update(await COMMANDS[type(command)](command, tx, ctx))


def _bound(
    handler: Callable[[Batch[E], Tx, Context], Awaitable[None]], ctx: Context
) -> Callable[[Batch[E], Tx], Awaitable[None]]:
    async def handle(batch: Batch[E], tx: Tx) -> None:
        await handler(batch, tx, ctx)

    handle.__doc__ = handler.__doc__  # the subscriber's description (AsyncAPI)
    return handle


def register(runtime: Runtime, ctx: Context) -> None:
    fan_out = _bound(on_events, ctx)
    for topic in event_topics():
        runtime.consumer(topic, group=groups.webhooks_fanout(topic), decode=decode_event)(fan_out)
    runtime.consumer(
        topics.COMMANDS_WEBHOOKS,
        group=groups.WEBHOOKS_COMMANDS,
        decode=decode_command,
        commands=True,
    )(_bound(on_command, ctx))
