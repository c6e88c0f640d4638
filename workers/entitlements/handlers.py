"""Entitlements subscribers — commands; invoicing and payments events (subscriptions and
unpaid invoices); metering's usage totals — and the tick: decode → one transaction →
storage and the pure service → announce."""

from __future__ import annotations

import json

from pydantic import TypeAdapter

from schemas import groups, topics
from schemas.entitlements import EntitlementsCommand
from schemas.envelope import WIRE, AnyEvent, CloudEvent
from schemas.invoicing import (
    InvoiceMarkedUncollectible,
    InvoicePaid,
    InvoiceVoided,
    SubscriptionCreated,
    SubscriptionEnded,
    SubscriptionUpdated,
)
from schemas.metering import UsageTotalsChanged
from schemas.payments import DunningExhausted, PaymentFailed
from storage.entitlements import EntitlementRepository
from workers.entitlements.announce import Key, announce
from workers.entitlements.commands import COMMANDS, Context
from workers.entitlements.jobs import Clock, Tick, utc_now
from workers.entitlements.service import Cause
from workers.entitlements.usage import on_totals
from workers.runtime import Batch, Runtime, Tx
from workers.settings import Settings

EVENT_TOPICS = (topics.EVENTS_INVOICING, topics.EVENTS_PAYMENTS)
_READ: tuple[type[CloudEvent], ...] = (
    SubscriptionCreated,
    SubscriptionUpdated,
    SubscriptionEnded,
    PaymentFailed,
    DunningExhausted,
    InvoiceMarkedUncollectible,
    InvoicePaid,
    InvoiceVoided,
    UsageTotalsChanged,
)
_KNOWN: dict[str, type[CloudEvent]] = {c.model_fields["type"].default: c for c in _READ}
_commands: TypeAdapter[EntitlementsCommand] = TypeAdapter(EntitlementsCommand)
_SUBSCRIPTION = {
    "subscription.created": Cause("subscribed", "plan_changed"),
    "subscription.updated": Cause("plan_changed", "plan_changed"),
    "subscription.ended": Cause("plan_changed", "subscription_ended"),
}


def decode_event(raw: bytes) -> CloudEvent:
    """The events entitlements follow, fully validated; any other by its envelope only."""
    obj = json.loads(raw)
    cls = _KNOWN.get(str(obj.get("type"))) if isinstance(obj, dict) else None
    return (cls or AnyEvent).model_validate(obj, context=WIRE)


def decode_command(raw: bytes) -> EntitlementsCommand:
    return _commands.validate_json(raw, context=WIRE)


async def apply_events(tx: Tx, events: list[CloudEvent], clock: Clock) -> int:
    """Subscriptions and unpaid invoices as the events tell, then their customers
    announced (once for the batch)."""
    repo = tx.repo(EntitlementRepository)
    subs = [
        e
        for e in events
        if isinstance(e, SubscriptionCreated | SubscriptionUpdated | SubscriptionEnded)
    ]
    intervals = await repo.plan_intervals({(e.tenantid, e.data.plan) for e in subs})
    causes: dict[Key, Cause] = {}
    for e in events:
        t = e.tenantid
        if isinstance(e, SubscriptionCreated | SubscriptionUpdated | SubscriptionEnded):
            d = e.data
            await repo.upsert_subscription(
                t,
                subscription_id=d.subscription_id,
                customer=d.customer,
                plan=d.plan,
                interval=intervals.get((t, d.plan), "month"),
                status=d.status,
                current_period_start=d.current_period_start,
                current_period_end=d.current_period_end,
            )
            causes[(t, d.customer)] = _SUBSCRIPTION[e.type]
        elif isinstance(e, PaymentFailed):
            await repo.payment_failed(t, e.data.invoice_id, e.data.customer, e.time)
            causes[(t, e.data.customer)] = Cause(invoice_id=e.data.invoice_id)
        elif isinstance(e, DunningExhausted | InvoiceMarkedUncollectible):
            await repo.exhausted(t, e.data.invoice_id, e.data.customer, e.time)
            causes[(t, e.data.customer)] = Cause(invoice_id=e.data.invoice_id)
        elif isinstance(e, InvoicePaid | InvoiceVoided) and await repo.settled(
            t, e.data.invoice_id
        ):
            why = "paid" if isinstance(e, InvoicePaid) else "voided"
            causes[(t, e.data.customer)] = Cause(restored=why, invoice_id=e.data.invoice_id)
    return await announce(tx, causes, clock())


def register(runtime: Runtime, settings: Settings, clock: Clock = utc_now) -> None:
    tick = Tick(runtime.jobs, settings, clock)
    loop = runtime.job("entitlements.tick", tick.tick, every_s=settings.entitlements_tick_s)

    async def on_command(batch: Batch[EntitlementsCommand], tx: Tx) -> None:
        """Features, plans' entitlements, overrides, grants and the tenant's configuration."""
        for message in await tx.claim(batch):
            async with tx.command(message) as result:
                ctx = Context(clock(), loop.wake)
                result.update(await COMMANDS[type(message.event)](message.event, tx, ctx))

    async def on_events(batch: Batch[CloudEvent], tx: Tx) -> None:
        """Subscriptions (subscription.*) and unpaid invoices (payment.failed,
        payment.dunning_exhausted, invoice.marked_uncollectible, invoice.paid/voided):
        access follows them (entitlement.granted, revoked, suspended, restored)."""
        fresh = await tx.claim([m for m in batch if not isinstance(m.event, AnyEvent)])
        await apply_events(tx, [m.event for m in fresh], clock)

    async def on_usage(batch: Batch[CloudEvent], tx: Tx) -> None:
        """Usage totals against metered features' limits (entitlement.limit_reached)."""
        totals = [m.event for m in batch if isinstance(m.event, UsageTotalsChanged)]
        await on_totals(tx, totals, clock())

    runtime.consumer(
        topics.COMMANDS_ENTITLEMENTS,
        group=groups.ENTITLEMENTS_COMMANDS,
        decode=decode_command,
        commands=True,
    )(on_command)
    runtime.consumer(
        EVENT_TOPICS, group=groups.ENTITLEMENTS_EVENTS, decode=decode_event, label="billing"
    )(on_events)
    runtime.consumer(topics.EVENTS_METERING, group=groups.ENTITLEMENTS_USAGE, decode=decode_event)(
        on_usage
    )
