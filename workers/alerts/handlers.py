"""Alerts subscribers (usage totals, operational and credit events, dead letters, commands)
and the sweep job: decode → one transaction → rules and service → publish."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog
from pydantic import TypeAdapter

from schemas import groups, topics
from schemas.alerts import AlertsCommand
from schemas.credits import EVENTS as CREDIT_EVENTS
from schemas.envelope import WIRE, AnyEvent, CloudEvent
from schemas.metering import UsageTotalsChanged
from schemas.ops import OpsQuarantined
from schemas.payments import DunningExhausted, PaymentFailed, PaymentSucceeded
from schemas.webhooks import EndpointDeleted, EndpointDisabled, EndpointEnabled
from storage.alerts import AlertsRepository
from storage.tenants import TenantRepository
from workers.alerts import service
from workers.alerts.commands import COMMANDS
from workers.alerts.credit import credit_subject, evaluate_credit
from workers.alerts.evaluate import UsageRules, touched
from workers.alerts.jobs import Sweep
from workers.alerts.publish import publish
from workers.alerts.service import Clock, utc_now
from workers.runtime import Batch, Message, Runtime, Tx
from workers.runtime.tx import DLQ_HEADER_PREFIX
from workers.settings import Settings

log = structlog.get_logger("billstream.alerts")

# the invoicing events for the credit ones (credit balance rules); the rest are not read
OPERATIONS_TOPICS = (
    topics.EVENTS_PAYMENTS,
    topics.EVENTS_WEBHOOKS,
    topics.EVENTS_OPS,
    topics.EVENTS_INVOICING,
)

E = TypeVar("E", bound=CloudEvent)

_commands: TypeAdapter[AlertsCommand] = TypeAdapter(AlertsCommand)

_READ: tuple[type[CloudEvent], ...] = (
    UsageTotalsChanged,
    PaymentFailed,
    DunningExhausted,
    PaymentSucceeded,
    EndpointDisabled,
    EndpointEnabled,
    EndpointDeleted,
    OpsQuarantined,  # ops.replayed and ops.redriven (tenant "*" possibly) are not read
    *CREDIT_EVENTS,  # other invoicing events are not read
)
_KNOWN: dict[str, type[CloudEvent]] = {c.model_fields["type"].default: c for c in _READ}


def decode_event(raw: bytes) -> CloudEvent:
    """The events alerts acts on, fully validated; any other type by its envelope only (so
    a new event type elsewhere never lands in a dead-letter topic here)."""
    obj = json.loads(raw)
    cls = _KNOWN.get(str(obj.get("type"))) if isinstance(obj, dict) else None
    return (cls or AnyEvent).model_validate(obj, context=WIRE)


class DeadLetter(AnyEvent):
    """A record of a dead-letter topic: whatever it holds (it may not even be JSON), it is
    read as far as it goes and never rejected."""

    tenantid: str = ""


def decode_dead_letter(raw: bytes) -> DeadLetter:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested too deep
        obj = None
    fields = obj if isinstance(obj, dict) else {}
    tenant = fields.get("tenantid")
    subject = fields.get("subject")
    return DeadLetter.model_construct(
        id=str(fields.get("id", "")),
        source=str(fields.get("source", "")),
        type=str(fields.get("type", "")),
        tenantid=tenant if isinstance(tenant, str) else "",
        # a subject no event may have (maybe why it was dead-lettered) is left out
        subject=subject if isinstance(subject, str) and 0 < len(subject) <= 256 else None,
        data=None,
    )


def decode_command(raw: bytes) -> AlertsCommand:
    return _commands.validate_json(raw, context=WIRE)


# --- handlers ----------------------------------------------------------------------------


async def on_usage(batch: Batch[CloudEvent], tx: Tx, clock: Clock = utc_now) -> None:
    """Compares changed usage totals against usage, spend and anomaly rules, and the
    projected credit balances of their subjects against credit balance rules.

    No inbox here: these are one event per touched (subject, meter, hour) and batch, and
    evaluating one again raises nothing new (alerts are unique, a credit balance crossing
    is kept once), so an inbox row each would only cost. Totals are read from the read
    model, never added up."""
    changes = touched([m.event for m in batch if isinstance(m.event, UsageTotalsChanged)])
    found = await UsageRules(tx, clock).evaluate(changes)
    publish(tx, await tx.repo(AlertsRepository).raise_alerts(found))
    credit = await evaluate_credit(tx, {(c.tenant_id, c.subject) for c in changes}, clock())
    publish(tx, credit)


async def on_operations(batch: Batch[CloudEvent], tx: Tx, clock: Clock = utc_now) -> None:
    """Raises payment, webhook-endpoint and quarantine alerts; resolves them when they
    are fixed. Credit events (``credit.*``) have the customer's projected credit balance
    compared against credit balance rules."""
    repo = tx.repo(AlertsRepository)
    credit: set[tuple[str, str]] = set()
    for m in await tx.claim([m for m in batch if not isinstance(m.event, AnyEvent)]):
        event, now = m.event, clock()
        changed = credit_subject(event)
        if changed is not None:
            credit.add(changed)
            continue
        condition = service.condition_raised_by(event)
        if condition is not None:
            rules = await repo.rules_for([event.tenantid], ["operational"], [condition])
            publish(tx, await repo.raise_alerts(service.raised_by(event, rules, now)), event)
            continue
        fixed = service.resolved_by(event)
        if fixed is not None:
            resolved = await repo.resolve_about([fixed.about], [fixed.condition], now, fixed.why)
            publish(tx, resolved, event)
    publish(tx, await evaluate_credit(tx, credit, clock()))


async def on_dead_letters(batch: Batch[DeadLetter], tx: Tx, clock: Clock = utc_now) -> None:
    """Raises an alert for every message that lands in a dead-letter topic."""
    # No inbox here: a dead letter's identity is its place in the topic, which is what the
    # alert's dedupe key holds. Records of no known tenant are logged, not alerted.
    now = clock()
    tenants = await tx.repo(TenantRepository).existing({m.event.tenantid for m in batch})
    for m in batch:
        if m.event.tenantid not in tenants:
            log.warning(
                "dead letter of no known tenant",
                topic=m.record.topic,
                partition=m.record.partition,
                offset=m.record.offset,
                reason=_header(m, "reason"),
            )
    known = [m for m in batch if m.event.tenantid in tenants]
    if not known:
        return
    repo = tx.repo(AlertsRepository)
    rules = await repo.rules_for(tenants, ["operational"], ["dead_letter"])
    found = [
        service.dead_letter(
            r,
            topic=m.record.topic,
            partition=m.record.partition,
            offset=m.record.offset,
            subject=m.event.subject,
            origin=_header(m, "topic") or m.record.topic.removesuffix(topics.DLQ_SUFFIX),
            reason=_header(m, "reason") or "no reason recorded",
            now=now,
        )
        for m in known
        for r in rules
        if r.tenant_id == m.event.tenantid
    ]
    publish(tx, await repo.raise_alerts(found))


def _header(m: Message[DeadLetter], name: str) -> str | None:
    for k, v in m.record.headers:
        if k == DLQ_HEADER_PREFIX + name:
            return (v or b"").decode("utf-8", "replace")
    return None


async def on_command(batch: Batch[AlertsCommand], tx: Tx, clock: Clock = utc_now) -> None:
    """Alert rules, acknowledgements and manual resolution."""
    for message in await tx.claim(batch):
        async with tx.command(message) as result:
            command = message.event
            result.update(await COMMANDS[type(command)](command, tx, clock()))


# --- registration ------------------------------------------------------------------------


def _clocked(
    handler: Callable[..., Awaitable[None]], clock: Clock
) -> Callable[[Sequence[Message[E]], Tx], Awaitable[None]]:
    """``handler`` reading ``clock`` (its docstring, which the AsyncAPI document shows,
    kept)."""
    bound: Any = functools.partial(handler, clock=clock)
    return functools.update_wrapper(bound, handler)


def register(runtime: Runtime, settings: Settings, clock: Clock = utc_now) -> None:
    runtime.consumer(topics.EVENTS_METERING, group=groups.ALERTS_USAGE, decode=decode_event)(
        _clocked(on_usage, clock)
    )
    runtime.consumer(
        OPERATIONS_TOPICS,
        group=groups.ALERTS_OPERATIONS,
        decode=decode_event,
        label="operations",
    )(_clocked(on_operations, clock))
    runtime.consumer(
        [t for t in topics.all_topic_names() if t.endswith(topics.DLQ_SUFFIX)],
        group=groups.ALERTS_DEAD_LETTERS,
        decode=decode_dead_letter,
        label="dead-letters",
    )(_clocked(on_dead_letters, clock))
    runtime.consumer(
        topics.COMMANDS_ALERTS,
        group=groups.ALERTS_COMMANDS,
        decode=decode_command,
        commands=True,
    )(_clocked(on_command, clock))
    runtime.job("alerts.sweep", Sweep(runtime.jobs, clock).tick, every_s=settings.alerts_tick_s)
