"""Metering's command table and usage handler, run in memory (``MemoryTx`` with fake
repositories): what they store, emit, dead-letter and answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from schemas import topics
from schemas.metering import CreateMeter, MeterSpec
from schemas.usage import UsageEvent
from storage.metering import MeterRepository, UsageRepository
from workers.metering import handlers
from workers.metering.commands import COMMANDS, create_meter
from workers.metering.service import MeterDef, PeriodKey, UniqueValue, UsageDelta
from workers.runtime.memory import MemoryTx, message

H10 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


class FakeMeters:
    """``MeterRepository`` in memory: meters by (tenant, key)."""

    def __init__(self, *meters: MeterDef) -> None:
        self.meters = {(m.tenant_id, m.key): m for m in meters}

    async def add(self, meter: MeterDef) -> MeterDef | None:
        existing = self.meters.get((meter.tenant_id, meter.key))
        if existing is None:
            self.meters[(meter.tenant_id, meter.key)] = meter
        return existing

    async def for_event_types(self, pairs: set[tuple[str, str]]) -> list[MeterDef]:
        return [m for m in self.meters.values() if (m.tenant_id, m.event_type) in pairs]


class FakeUsage:
    """``UsageRepository`` in memory: the deltas applied; period totals of sum meters."""

    def __init__(self) -> None:
        self.deltas: list[UsageDelta] = []
        self.uniques: list[UniqueValue] = []

    async def apply(self, deltas: list[UsageDelta], uniques: list[UniqueValue]) -> None:
        self.deltas += deltas
        self.uniques += uniques

    async def period_totals(self, keys: list[PeriodKey]) -> list[Decimal | None]:
        def total(k: PeriodKey) -> Decimal | None:
            sums = [
                d.sum
                for d in self.deltas
                if (d.meter_id, d.subject) == (k.meter.id, k.subject)
                and k.start <= d.bucket < k.end
                and d.sum is not None
            ]
            return sum(sums, Decimal(0)) if sums else None

        return [total(k) for k in keys]


def create(key: str = "tokens", tenant: str = "acme", **spec: Any) -> CreateMeter:
    fields: dict[str, Any] = {
        "key": key,
        "event_type": "llm.completion",
        "aggregation": "sum",
        "value_property": "$.tokens",
        **spec,
    }
    return CreateMeter(source="tests", tenantid=tenant, data=MeterSpec(**fields))


def usage(id: str, tokens: Any, *, at: datetime, type: str = "llm.completion") -> UsageEvent:
    return UsageEvent(
        id=id,
        source="tests",
        type=type,
        subject="customer-1",
        time=at,
        data={"tokens": tokens},
        tenantid="acme",
    )


# --- commands --------------------------------------------------------------------------


async def test_create_meter_stores_it_answers_its_id_and_emits_meter_created() -> None:
    meters = FakeMeters()
    tx = MemoryTx({MeterRepository: meters})
    command = create(name="Tokens")
    await handlers.on_command([message(command)], tx)
    [(kind, outcome)] = tx.outcomes
    stored = meters.meters[("acme", "tokens")]
    assert (kind, outcome.status, outcome.result) == (
        "CreateMeter",
        "succeeded",
        {"meter_id": stored.id},
    )
    assert (stored.event_type, stored.aggregation, stored.value_property, stored.name) == (
        "llm.completion",
        "sum",
        "$.tokens",
        "Tokens",
    )
    [event] = tx.events
    assert event["type"] == "meter.created"
    assert event["data"]["meter_id"] == stored.id and event["data"]["key"] == "tokens"
    assert event["causationid"] == command.id
    [out] = tx.outgoing
    assert (out.topic, out.key) == (topics.EVENTS_METERING, b"acme")


async def test_the_same_definition_again_answers_the_existing_meter_and_emits_nothing() -> None:
    meters = FakeMeters()
    first = await create_meter(create(), MemoryTx({MeterRepository: meters}))
    tx = MemoryTx({MeterRepository: meters})
    assert await COMMANDS[CreateMeter](create(), tx) == first
    assert tx.outgoing == [] and len(meters.meters) == 1


async def test_a_different_definition_under_an_existing_key_fails_and_emits_nothing() -> None:
    meters = FakeMeters()
    await create_meter(create(), MemoryTx({MeterRepository: meters}))
    tx = MemoryTx({MeterRepository: meters})
    await handlers.on_command([message(create(aggregation="max"))], tx)
    [(_, outcome)] = tx.outcomes
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "meter_conflict"
    assert tx.events == []
    assert meters.meters[("acme", "tokens")].aggregation == "sum"  # unchanged


# --- usage -----------------------------------------------------------------------------


async def test_usage_is_folded_into_hourly_deltas_and_each_touched_hour_emits_its_total() -> None:
    meter = MeterDef("m-1", "acme", "tokens", "llm.completion", "sum", "$.tokens", {})
    usage_repo = FakeUsage()
    tx = MemoryTx({MeterRepository: FakeMeters(meter), UsageRepository: usage_repo})
    batch = [
        message(usage("e1", 7, at=H10 + timedelta(minutes=5)), topic=topics.USAGE, offset=0),
        message(usage("e2", "5.5", at=H10 + timedelta(minutes=50)), topic=topics.USAGE, offset=1),
        message(usage("e1", 7, at=H10 + timedelta(minutes=5)), topic=topics.USAGE, offset=2),
        message(usage("e3", 1, at=H10, type="other.type"), topic=topics.USAGE, offset=3),
    ]
    await handlers.on_usage(batch, tx)
    # e1 once (the copy is a duplicate), e3 dead-lettered: no meter reads its type
    assert tx.duplicates == 1 and tx.rejected == 1
    [(dlq, headers)] = tx.dead_letters
    assert dlq == topics.dlq(topics.USAGE)
    assert "no meter reads event type 'other.type'" in headers["billstream-dlq-reason"]
    [delta] = usage_repo.deltas
    assert (delta.meter_id, delta.subject, delta.bucket, delta.groups) == (
        "m-1",
        "customer-1",
        H10,
        "{}",
    )
    assert (delta.count, delta.sum) == (2, Decimal("12.5"))  # 7 + 5.5
    assert (delta.min, delta.max) == (Decimal("5.5"), Decimal(7))
    assert delta.latest_value == Decimal("5.5")  # the later event's value
    [event] = tx.events
    assert event["type"] == "usage.totals_changed" and event["subject"] == "customer-1"
    assert event["data"] == {
        "meter_id": "m-1",
        "meter": "tokens",
        "aggregation": "sum",
        "subject": "customer-1",
        "period_start": "2026-05-01T10:00:00Z",
        "period_end": "2026-05-01T11:00:00Z",
        "total": "12.5",  # 7 + 5.5
        "events": 2,
    }
    [out] = [m for m in tx.outgoing if m.topic == topics.EVENTS_METERING]
    assert out.key == b"acme"
