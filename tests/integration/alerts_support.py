"""Helpers of the alerts tests: rules through the command topic, alerts as stored and as
published, and a way to wait until the alerts worker has seen everything."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas import groups, topics
from schemas.alerts import AlertsCommand, CreateAlertRule, RuleSpec
from storage.alerts import AlertsRepository
from tests.integration.support import (
    Sessions,
    command_outcome,
    read_all,
    send_raw,
    wait_committed_to_end,
    wait_outbox_drained,
)
from workers.alerts.service import Alert
from workers.settings import Settings


async def command(p: AIOKafkaProducer, sessions: Sessions, c: AlertsCommand) -> dict[str, Any]:
    """Send an alerts command; wait for its outcome and return its result (must succeed)."""
    await send_raw(p, topics.COMMANDS_ALERTS, c.to_json(), c.tenantid.encode())
    record = await command_outcome(sessions, c.tenantid, c.id)
    assert record.status == "succeeded", record.error
    return dict(record.result or {})


async def create_rule(
    p: AIOKafkaProducer, sessions: Sessions, tenant: str, key: str, rule: dict[str, Any]
) -> None:
    spec = RuleSpec.model_validate({"key": key, "rule": rule})
    await command(p, sessions, CreateAlertRule(source="tests", tenantid=tenant, data=spec))


async def stored(sessions: Sessions, tenant: str, **kw: Any) -> list[Alert]:
    """The tenant's alerts, oldest first."""
    async with sessions() as session:
        alerts = await AlertsRepository(session).list_alerts(tenant, states=(), **kw)
    return sorted(alerts, key=lambda a: (a.raised_at, a.threshold or 0))


async def settled(settings: Settings, sessions: Sessions, *, usage: bool = True) -> None:
    """Wait until metering (if ``usage``) and the alerts consumers have applied everything
    on their topics, and every outbox row is published."""
    if usage:
        await wait_committed_to_end(settings, groups.METERING_USAGE, topics.USAGE)
        await wait_outbox_drained(sessions)
        await wait_committed_to_end(settings, groups.ALERTS_USAGE, topics.EVENTS_METERING)
    else:
        for topic in (topics.EVENTS_PAYMENTS, topics.EVENTS_WEBHOOKS):
            await wait_committed_to_end(settings, groups.ALERTS_OPERATIONS, topic)
    await wait_outbox_drained(sessions)


async def published(settings: Settings, types: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The events on the alerts topic (of ``types``), as JSON."""
    import json

    records, _ = await read_all(settings, topics.EVENTS_ALERTS)
    events = [json.loads(r.value) for r in records]
    return [e for e in events if types is None or e["type"] in types]


async def dead_letters_settled(settings: Settings, sessions: Sessions) -> None:
    """Wait until the alerts dead-letter consumer has applied every record of every
    dead-letter topic, and every outbox row is published (metering's dead letters too)."""
    await wait_outbox_drained(sessions)
    for topic in topics.all_topic_names():
        if topic.endswith(topics.DLQ_SUFFIX):
            await wait_committed_to_end(settings, groups.ALERTS_DEAD_LETTERS, topic)
    await wait_outbox_drained(sessions)
