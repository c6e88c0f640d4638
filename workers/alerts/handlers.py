"""Alerts subscribers: usage totals, operational events, dead letters, commands; and the
sweep that raises overdue-invoice alerts and resolves what ended."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ConfigDict, Field, TypeAdapter

from schemas import topics
from schemas.alerts import (
    AcknowledgeAlert,
    AlertsCommand,
    CreateAlertRule,
    DeleteAlertRule,
    ResolveAlert,
)
from schemas.envelope import WIRE, CloudEvent
from schemas.metering import UsageTotalsChanged
from schemas.ops import OpsQuarantined
from schemas.payments import DunningExhausted, PaymentFailed, PaymentSucceeded
from schemas.webhooks import EndpointDeleted, EndpointDisabled, EndpointEnabled
from storage.alerts import Alert, AlertsRepository, OverdueInvoice
from storage.tenants import TenantRepository
from workers.alerts import service
from workers.alerts.errors import AlertNotFound, RuleNotFound
from workers.alerts.evaluate import UsageRules, touched
from workers.runtime import Batch, Item, Message, Runtime, Tx
from workers.runtime.tx import DLQ_HEADER_PREFIX
from workers.settings import Settings

log = structlog.get_logger("billstream.alerts")

USAGE_GROUP = "billstream.alerts.usage"
OPERATIONS_GROUP = "billstream.alerts.operations"
DEAD_LETTERS_GROUP = "billstream.alerts.dead-letters"
COMMANDS_GROUP = "billstream.alerts.commands"
OPERATIONS_TOPICS = (topics.EVENTS_PAYMENTS, topics.EVENTS_WEBHOOKS, topics.EVENTS_OPS)
SWEEP_LIMIT = 500

Clock = Callable[[], datetime]

_commands: TypeAdapter[AlertsCommand] = TypeAdapter(AlertsCommand)


class OtherEvent(CloudEvent):
    """An event the alerts context does not look at: only the envelope is read."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    tenantid: str = Field(min_length=1, max_length=256)
    data: Any = None


_KNOWN: dict[str, type[CloudEvent]] = {
    c.model_fields["type"].default: c
    for c in (
        UsageTotalsChanged,
        PaymentFailed,
        DunningExhausted,
        PaymentSucceeded,
        EndpointDisabled,
        EndpointEnabled,
        EndpointDeleted,
        OpsQuarantined,  # ops.replayed and ops.redriven (tenant "*" possibly) are not read
    )
}


def decode_event(raw: bytes) -> CloudEvent:
    """The events alerts acts on, fully validated; any other type by its envelope only (so
    a new event type elsewhere never lands in a dead-letter topic here)."""
    obj = json.loads(raw)
    cls = _KNOWN.get(str(obj.get("type"))) if isinstance(obj, dict) else None
    return (cls or OtherEvent).model_validate(obj, context=WIRE)


class DeadLetter(OtherEvent):
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


def emit_all(
    emit: Callable[[CloudEvent], None],
    alerts: Sequence[Alert],
    after_commit: Callable[[Callable[[], None]], None],
    cause: CloudEvent | None = None,
) -> None:
    """Publish each alert's event (outbox) and, once committed, log it: the structured log
    is a channel of its own."""
    for a in alerts:
        emit(service.event_for(a, cause))
    if alerts:
        after_commit(lambda: _log(alerts))


def _log(alerts: Sequence[Alert]) -> None:
    for a in alerts:
        level = log.warning if a.state == "firing" else log.info
        level(
            f"alert {a.state}",
            alert_id=a.id,
            tenantid=a.tenant_id,
            rule=a.rule_key,
            kind=a.kind,
            condition=a.condition,
            subject=a.subject,
            threshold=str(a.threshold) if a.threshold is not None else None,
            value=str(a.value) if a.value is not None else None,
            unit=a.unit,
            about=a.about_href,
            message=a.message,
            resolution=a.resolution,
        )


def _emitter(tx: Tx) -> Callable[[CloudEvent], None]:
    return lambda e: tx.emit(e, topic=topics.EVENTS_ALERTS, key=e.tenantid)


def register(runtime: Runtime, clock: Clock) -> None:
    @runtime.consumer(topics.EVENTS_METERING, group=USAGE_GROUP, decode=decode_event)
    async def on_usage(batch: Batch[CloudEvent], tx: Tx) -> None:
        """Compares changed usage totals against usage, spend and anomaly rules.

        No inbox here: these are one event per touched (subject, meter, hour) and batch, and
        evaluating one again raises nothing new (alerts are unique), so an inbox row each
        would only cost. Totals are read from the read model, never added up."""
        changes = touched([m.event for m in batch if isinstance(m.event, UsageTotalsChanged)])
        found = await UsageRules(tx, clock).evaluate(changes)
        raised = await tx.repo(AlertsRepository).raise_alerts(found)
        emit_all(_emitter(tx), raised, tx.after_commit)

    @runtime.consumer(
        OPERATIONS_TOPICS, group=OPERATIONS_GROUP, decode=decode_event, label="operations"
    )
    async def on_operations(batch: Batch[CloudEvent], tx: Tx) -> None:
        """Raises payment, webhook-endpoint and quarantine alerts; resolves them when they
        are fixed."""
        fresh = await tx.claim([m for m in batch if not isinstance(m.event, OtherEvent)])
        for m in fresh:
            await operational(m.event, tx, clock())

    @runtime.consumer(
        [t for t in topics.all_topic_names() if t.endswith(topics.DLQ_SUFFIX)],
        group=DEAD_LETTERS_GROUP,
        decode=decode_dead_letter,
        label="dead-letters",
    )
    async def on_dead_letters(batch: Batch[DeadLetter], tx: Tx) -> None:
        """Raises an alert for every message that lands in a dead-letter topic."""
        await dead_letters(batch, tx, clock())

    @runtime.consumer(
        topics.COMMANDS_ALERTS,
        group=COMMANDS_GROUP,
        decode=lambda raw: _commands.validate_json(raw, context=WIRE),
        commands=True,
    )
    async def on_command(batch: Batch[AlertsCommand], tx: Tx) -> None:
        """Alert rules, acknowledgements and manual resolution."""
        for message in await tx.claim(batch):
            async with tx.command(message) as result:
                await apply(message, tx, clock(), result)


async def operational(event: CloudEvent, tx: Tx, now: datetime) -> None:
    repo = tx.repo(AlertsRepository)
    resolved: list[Alert] = []
    if isinstance(event, PaymentFailed | DunningExhausted | EndpointDisabled | OpsQuarantined):
        condition = {
            PaymentFailed: "payment_failed",
            DunningExhausted: "dunning_exhausted",
            EndpointDisabled: "webhook_endpoint_disabled",
            OpsQuarantined: "job_quarantined",
        }[type(event)]
        rules = await repo.rules_for([event.tenantid], ["operational"], [condition])
        found = [
            service.payment_failed(r, event, now)
            if isinstance(event, PaymentFailed)
            else service.dunning_exhausted(r, event, now)
            if isinstance(event, DunningExhausted)
            else service.job_quarantined(r, event, now)
            if isinstance(event, OpsQuarantined)
            else service.endpoint_disabled(r, event, now)
            for r in rules
        ]
        emit_all(_emitter(tx), await repo.raise_alerts(found), tx.after_commit, event)
        return
    if isinstance(event, PaymentSucceeded):
        ref = (event.tenantid, "invoice", event.data.invoice_id)
        resolved = await repo.resolve_about([ref], ["payment_failed"], now, "payment succeeded")
    elif isinstance(event, EndpointEnabled | EndpointDeleted):
        ref = (event.tenantid, "webhook_endpoint", event.data.endpoint_id)
        why = "endpoint enabled" if isinstance(event, EndpointEnabled) else "endpoint deleted"
        resolved = await repo.resolve_about([ref], ["webhook_endpoint_disabled"], now, why)
    emit_all(_emitter(tx), resolved, tx.after_commit, event)


async def dead_letters(batch: Batch[DeadLetter], tx: Tx, now: datetime) -> None:
    """No inbox here: a dead letter's identity is its place in the topic, which is what the
    alert's dedupe key holds. Records of no known tenant are logged, not alerted."""
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
    emit_all(_emitter(tx), await repo.raise_alerts(found), tx.after_commit)


def _header(m: Message[DeadLetter], name: str) -> str | None:
    for k, v in m.record.headers:
        if k == DLQ_HEADER_PREFIX + name:
            return (v or b"").decode("utf-8", "replace")
    return None


async def apply(
    message: Message[AlertsCommand], tx: Tx, now: datetime, result: dict[str, Any]
) -> None:
    command = message.event
    repo = tx.repo(AlertsRepository)
    changed: list[Alert] = []
    if isinstance(command, CreateAlertRule):
        wanted = service.new_rule(command)
        existing = await repo.add_rule(wanted)
        if existing is not None:
            service.ensure_same_definition(existing, wanted)
        result["rule"] = command.data.key
    elif isinstance(command, DeleteAlertRule):
        deleted = await repo.delete_rule(command.tenantid, command.data.key)
        if deleted is None:
            raise RuleNotFound(f"no alert rule {command.data.key!r}", field="key")
        changed = await repo.resolve_rule(command.tenantid, deleted.id, now)
        result["rule"] = command.data.key
        result["resolved"] = len(changed)
    else:
        alert_id = command.data.alert_id
        current = await repo.alert(command.tenantid, alert_id, lock=True)
        if current is None:
            raise AlertNotFound(f"no alert {alert_id!r}", field="alert_id")
        if isinstance(command, AcknowledgeAlert):
            after = await repo.acknowledge(command.tenantid, alert_id, now)
        else:
            assert isinstance(command, ResolveAlert)
            why = (
                f"resolved by hand: {command.data.note}"
                if command.data.note
                else "resolved by hand"
            )
            after = await repo.resolve(command.tenantid, alert_id, now, why)
        changed = [after] if after is not None else []
        result["alert_id"] = alert_id
        result["state"] = (after or current).state
    emit_all(_emitter(tx), changed, tx.after_commit, command)


RESOLVE_ENDED = "alerts.resolve_ended_periods"  # quarantine kind "alert"
RESOLVE_SETTLED = "alerts.resolve_settled_invoices"  # quarantine kind "alert"
OVERDUE = "alerts.invoice_overdue"  # quarantine kind "invoice"


class Sweeper:
    """Every ``alerts_tick_s``: resolve alerts whose period ended or whose invoice was
    settled, raise overdue-invoice alerts. Each part is a job step (``runtime.jobs``: one
    transaction, transient failures retried); an alert or invoice it fails on permanently
    (one tenant's poison row) is quarantined and the sweep carries on for everyone else.
    Replicas share the work through row locks (``SKIP LOCKED``) and the alerts' uniqueness."""

    def __init__(self, runtime: Runtime, settings: Settings, clock: Clock) -> None:
        self.jobs = runtime.jobs
        self.interval_s = settings.alerts_tick_s
        self.clock = clock

    async def tick(self) -> bool:
        """One chunk of each part; True when a part claimed a full chunk (more is due)."""
        return await self.step() >= SWEEP_LIMIT

    async def step(self) -> int:
        """One chunk of each part; returns the most rows any part claimed."""
        now = self.clock()
        return max(
            await self._resolve_ended(now),
            await self._resolve_settled(now),
            await self._raise_overdue(now),
        )

    async def _resolve_ended(self, now: datetime) -> int:
        claimed = 0

        async def claim(tx: Tx, only: Sequence[Item] | None) -> list[tuple[str, str]]:
            nonlocal claimed
            ids = [i.id for i in only] if only is not None else None
            found = await tx.repo(AlertsRepository).ended_periods(
                now, SWEEP_LIMIT, job=RESOLVE_ENDED, only=ids
            )
            claimed = max(claimed, len(found)) if only is None else claimed
            return found

        async def resolve(tx: Tx, alerts: Sequence[tuple[str, str]]) -> int:
            ids = [id for _, id in alerts]
            done = await tx.repo(AlertsRepository).resolve_claimed(
                ids, ["period ended"] * len(ids), now
            )
            emit_all(_emitter(tx), done, tx.after_commit)
            return len(done)

        await self.jobs.claimed(RESOLVE_ENDED, claim, lambda a: Item(a[0], "alert", a[1]), resolve)
        return claimed

    async def _resolve_settled(self, now: datetime) -> int:
        claimed = 0

        async def claim(tx: Tx, only: Sequence[Item] | None) -> list[tuple[str, str, str]]:
            nonlocal claimed
            ids = [i.id for i in only] if only is not None else None
            found = await tx.repo(AlertsRepository).settled_invoices(
                SWEEP_LIMIT, job=RESOLVE_SETTLED, only=ids
            )
            claimed = max(claimed, len(found)) if only is None else claimed
            return found

        async def resolve(tx: Tx, alerts: Sequence[tuple[str, str, str]]) -> int:
            done = await tx.repo(AlertsRepository).resolve_claimed(
                [id for _, id, _ in alerts], [f"invoice {status}" for _, _, status in alerts], now
            )
            emit_all(_emitter(tx), done, tx.after_commit)
            return len(done)

        await self.jobs.claimed(
            RESOLVE_SETTLED, claim, lambda a: Item(a[0], "alert", a[1]), resolve
        )
        return claimed

    async def _raise_overdue(self, now: datetime) -> int:
        claimed = 0

        async def claim(tx: Tx, only: Sequence[Item] | None) -> list[OverdueInvoice]:
            nonlocal claimed
            pairs = [(i.tenant_id, i.id) for i in only] if only is not None else None
            found = await tx.repo(AlertsRepository).overdue_invoices(
                now, SWEEP_LIMIT, job=OVERDUE, only=pairs
            )
            claimed = max(claimed, len(found)) if only is None else claimed
            return found

        async def raise_(tx: Tx, overdue: Sequence[OverdueInvoice]) -> int:
            repo = tx.repo(AlertsRepository)
            rules = await repo.rules_for(
                {i.tenant_id for i in overdue}, ["operational"], ["invoice_overdue"]
            )
            raised = await repo.raise_alerts(
                [
                    service.invoice_overdue(r, i, now)
                    for i in overdue
                    for r in rules
                    if r.tenant_id == i.tenant_id
                ]
            )
            emit_all(_emitter(tx), raised, tx.after_commit)
            return len(raised)

        await self.jobs.claimed(
            OVERDUE, claim, lambda i: Item(i.tenant_id, "invoice", i.invoice_id), raise_
        )
        return claimed


def utc_now() -> datetime:
    return datetime.now(UTC)
