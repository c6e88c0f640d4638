"""``billstream replay``: read a topic's range again, either by moving a consumer group's
offsets back (``--group``) or by re-publishing the selected records (``--into``).

Every consumer is idempotent (the inbox), so replaying messages that were already applied
changes nothing; replaying after a fix (a meter created, a bug corrected) applies what
was missed. Every replay is audited (``ops.replayed``) before it starts.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.envelope import TENANT_ID_PATTERN
from schemas.ops import ALL_TENANTS, OpsReplayed, PartitionRange, ReplayedData
from workers.ops import audit, kafka
from workers.ops.errors import UsageError
from workers.ops.progress import NoProgress, Progress
from workers.runtime.publisher import Handed, Record
from workers.settings import Settings

REPLAY_ID_HEADER = "billstream-replay-id"
REPLAY_OF_HEADER = "billstream-replay-of"
REPLAY_AT_HEADER = "billstream-replay-at"

# --- the pure core -------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """A ``--from`` / ``--to`` value: an offset, a time, or either end of the log."""

    kind: Literal["offset", "time", "earliest", "latest"]
    text: str
    offset: int | None = None
    time: datetime | None = None


def parse_bound(text: str, option: str) -> Bound:
    """``123`` (an offset in every selected partition), an RFC 3339 time with a zone
    (``2026-11-22T10:00:00Z``), a date (midnight UTC), ``earliest`` or ``latest``."""
    value = text.strip()
    lowered = value.lower()
    if lowered in ("earliest", "beginning"):
        return Bound("earliest", value)
    if lowered in ("latest", "end"):
        return Bound("latest", value)
    if re.fullmatch(r"\d+", value):
        return Bound("offset", value, offset=int(value))
    if re.fullmatch(r"-\d+", value):
        raise UsageError(f"an offset cannot be negative: {value!r}", option=option)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            d = date.fromisoformat(value)
            return Bound("time", value, time=datetime(d.year, d.month, d.day, tzinfo=UTC))
        at = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{value!r} is neither an offset, an RFC 3339 time (2026-11-22T10:00:00Z), "
            "'earliest' nor 'latest'",
            option=option,
        ) from None
    if at.tzinfo is None:
        raise UsageError(f"{value!r} has no time zone; add one, e.g. Z or +01:00", option=option)
    return Bound("time", value, time=at)


def matches(value: bytes | None, tenant: str | None, type_glob: str | None) -> bool:
    """Whether a record passes ``--tenant`` and ``--type`` (a glob on the CloudEvents type).

    Without filters every record passes; with one, a record that is not a CloudEvents JSON
    object does not."""
    if tenant is None and type_glob is None:
        return True
    if value is None:
        return False
    try:
        event = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(event, dict):
        return False
    if tenant is not None and event.get("tenantid") != tenant:
        return False
    ce_type = event.get("type")
    return type_glob is None or (
        isinstance(ce_type, str) and fnmatch.fnmatchcase(ce_type, type_glob)
    )


def replay_headers(
    headers: Sequence[tuple[str, bytes]], replay_id: str, origin: str, at: datetime
) -> list[tuple[str, bytes]]:
    """The record's own headers, then the replay's (replacing any earlier replay's)."""
    ours = {REPLAY_ID_HEADER, REPLAY_OF_HEADER, REPLAY_AT_HEADER}
    kept = [(k, v) for k, v in headers if k not in ours]
    return [
        *kept,
        (REPLAY_ID_HEADER, replay_id.encode()),
        (REPLAY_OF_HEADER, origin.encode()),
        (REPLAY_AT_HEADER, at.isoformat().encode()),
    ]


@dataclass(frozen=True)
class GroupPartitionPlan:
    partition: int
    committed: int | None
    target: int
    end: int

    @property
    def rereads(self) -> int:
        """How many records the group reads again (none when the target is not behind)."""
        if self.committed is None:
            return 0
        return max(0, self.committed - self.target)

    @property
    def moves(self) -> bool:
        return self.rereads > 0

    @property
    def note(self) -> str:
        if self.committed is None:
            return "no committed offset: the group has not read this partition yet"
        if not self.moves:
            return "already at or before --from: left as it is"
        return ""


def plan_group_reset(
    committed: dict[int, int | None], targets: dict[int, int], ends: dict[int, int]
) -> list[GroupPartitionPlan]:
    """Per partition: where the group is, where it goes. A replay never moves a group
    forward (that would skip records) and leaves partitions it has not read alone."""
    return [GroupPartitionPlan(p, committed.get(p), targets[p], ends[p]) for p in sorted(targets)]


#: ``--rate`` is kept in steps of at most this long: records are handed to the producer
#: together, then the pause that their number calls for (not one record per pause, which
#: would make one produce request per record)
PACE_STEP_S = 0.02


class Pacer:
    """At most ``rate`` records per second (0: unlimited), smoothly, with a one-second burst."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._allowance = rate
        self._last = time.monotonic()

    def delay(self, now: float) -> float:
        """Seconds to wait before the next record (and account for it)."""
        if self.rate <= 0:
            return 0.0
        self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate)
        self._last = now
        if self._allowance >= 1:
            self._allowance -= 1
            return 0.0
        wait = (1 - self._allowance) / self.rate
        self._allowance -= 1
        return wait

    async def wait(self) -> None:
        pause = self.delay(time.monotonic())
        if pause > 0:
            await asyncio.sleep(pause)


# --- the request and its outcome -------------------------------------------------------------


@dataclass(frozen=True)
class ReplayRequest:
    topic: str
    start: Bound
    reason: str
    actor: str
    end: Bound | None = None
    partition: int | None = None
    tenant: str | None = None
    type_glob: str | None = None
    group: str | None = None
    into: str | None = None
    dry_run: bool = False
    rate: float = 0.0

    def validate(self) -> None:
        if (self.group is None) == (self.into is None):
            raise UsageError(
                "choose one mode: --group G (reset the group's offsets) or --into TOPIC "
                "(re-publish the records)",
                option="--group/--into",
            )
        if not self.reason.strip():
            raise UsageError("say why (it goes into the audit event)", option="--reason")
        if self.group is not None:
            given = [
                name
                for name, value in (
                    ("--to", self.end),
                    ("--tenant", self.tenant),
                    ("--type", self.type_glob),
                )
                if value is not None
            ]
            if given:
                raise UsageError(
                    "a group reset re-reads everything from --from up to the group's "
                    "committed offsets; --to, --tenant and --type select records to "
                    "re-publish and need --into",
                    option=given[0],
                )
            if self.start.kind == "latest":
                raise UsageError("'latest' would re-read nothing", option="--from")
        if self.tenant is not None and not re.fullmatch(TENANT_ID_PATTERN, self.tenant):
            raise UsageError(f"a tenant id matches {TENANT_ID_PATTERN}", option="--tenant")
        if self.rate < 0:
            raise UsageError("records per second, 0 for no limit", option="--rate")


@dataclass(frozen=True)
class PartitionOutcome:
    partition: int
    start: int
    end: int | None
    committed: int | None = None
    records: int = 0
    note: str = ""


@dataclass
class ReplayResult:
    mode: Literal["group", "topic"]
    topic: str
    dry_run: bool
    partitions: list[PartitionOutcome] = field(default_factory=list)
    records: int = 0  # records in the range (group: how many the group re-reads)
    matched: int = 0  # passed --tenant/--type (topic mode)
    published: int = 0
    audit_id: str | None = None
    group: str | None = None
    into: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "topic": self.topic,
            "group": self.group,
            "into": self.into,
            "dry_run": self.dry_run,
            "records": self.records,
            "matched": self.matched,
            "published": self.published,
            "audit_id": self.audit_id,
            "partitions": [p.__dict__ for p in self.partitions],
        }


# --- the I/O ---------------------------------------------------------------------------------


async def _resolve(
    c: AIOKafkaConsumer,
    tp: TopicPartition,
    bound: Bound,
    bounds: kafka.Bounds,
) -> int:
    if bound.kind == "earliest":
        return bounds.beginning
    if bound.kind == "latest":
        return bounds.end
    if bound.kind == "offset":
        assert bound.offset is not None
        return min(max(bound.offset, bounds.beginning), bounds.end)
    assert bound.time is not None
    return await kafka.offset_for_time(c, tp, bound.time, bounds)


def _audit_event(req: ReplayRequest, ranges: list[PartitionRange], messages: int) -> OpsReplayed:
    return OpsReplayed(
        source=audit.SOURCE,
        tenantid=req.tenant or ALL_TENANTS,
        subject=req.group or req.into,
        data=ReplayedData(
            actor=req.actor,
            reason=req.reason,
            host=audit.hostname(),
            mode="group" if req.group else "topic",
            topic=req.topic,
            group=req.group,
            into=req.into,
            start=req.start.text,
            end=req.end.text if req.end else None,
            tenant=req.tenant,
            type_glob=req.type_glob,
            partitions=ranges,
            messages=messages,
        ),
    )


async def replay(
    settings: Settings, req: ReplayRequest, progress: Progress | None = None
) -> ReplayResult:
    req.validate()
    progress = progress or NoProgress()
    async with kafka.consumer(settings) as c:
        tps = await kafka.topic_partitions(c, req.topic, req.partition)
        if req.into is not None:
            await kafka.topic_partitions(c, req.into, option="--into")
        bounds = await kafka.log_bounds(c, tps)
        starts = {tp: await _resolve(c, tp, req.start, bounds[tp]) for tp in tps}
        if req.group is not None:
            return await _replay_group(settings, req, tps, bounds, starts)
        end_bound = req.end or Bound("latest", "latest")
        ends = {tp: max(starts[tp], await _resolve(c, tp, end_bound, bounds[tp])) for tp in tps}
        return await _replay_into(settings, c, req, tps, starts, ends, progress)


async def _replay_group(
    settings: Settings,
    req: ReplayRequest,
    tps: list[TopicPartition],
    bounds: dict[TopicPartition, kafka.Bounds],
    starts: dict[TopicPartition, int],
) -> ReplayResult:
    assert req.group is not None
    committed = await kafka.committed_offsets(settings, req.group, tps)
    plan = plan_group_reset(
        {tp.partition: committed[tp] for tp in tps},
        {tp.partition: starts[tp] for tp in tps},
        {tp.partition: bounds[tp].end for tp in tps},
    )
    result = ReplayResult("group", req.topic, req.dry_run, group=req.group)
    result.partitions = [
        PartitionOutcome(p.partition, p.target, None, p.committed, p.rereads, p.note) for p in plan
    ]
    result.records = sum(p.rereads for p in plan)
    moving = [p for p in plan if p.moves]
    if req.dry_run or not moving:
        return result
    by_partition = {tp.partition: tp for tp in tps}
    async with kafka.exclusive_group(settings, req.group, tps) as commit:
        event = _audit_event(
            req,
            [PartitionRange(partition=p.partition, start=p.target) for p in moving],
            result.records,
        )
        await audit.record(settings, event)
        result.audit_id = event.id
        await commit({by_partition[p.partition]: p.target for p in moving})
    return result


async def _replay_into(
    settings: Settings,
    c: AIOKafkaConsumer,
    req: ReplayRequest,
    tps: list[TopicPartition],
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    progress: Progress,
) -> ReplayResult:
    assert req.into is not None
    result = ReplayResult("topic", req.topic, req.dry_run, into=req.into)
    result.partitions = [
        PartitionOutcome(tp.partition, starts[tp], ends[tp], records=ends[tp] - starts[tp])
        for tp in tps
    ]
    result.records = sum(ends[tp] - starts[tp] for tp in tps)
    ranges = {tp: (starts[tp], ends[tp]) for tp in tps}
    if req.dry_run:
        progress.begin(f"counting {req.topic}", result.records)
        async for batch in kafka.read_range(c, ranges):
            result.matched += sum(1 for r in batch if matches(r.value, req.tenant, req.type_glob))
            progress.advance(len(batch))
        return result
    event = _audit_event(
        req,
        [
            PartitionRange(partition=tp.partition, start=starts[tp], end=ends[tp])
            for tp in tps
            if ends[tp] > starts[tp]
        ],
        result.records,
    )
    await audit.record(settings, event)
    result.audit_id = event.id
    pacer = Pacer(req.rate)
    now = datetime.now(UTC)
    progress.begin(f"replaying {req.topic} into {req.into}", result.records)
    async with kafka.publisher(settings) as p:
        chunk: list[Record] = []
        in_flight: list[Handed] = []

        async def hand_over() -> None:
            if chunk:
                in_flight.append(await p.hand_over(chunk))
                chunk.clear()

        async def acknowledged() -> None:
            for handed in in_flight:
                await handed.acknowledged()
                result.published += handed.count
            in_flight.clear()

        async for batch in kafka.read_range(c, ranges):
            for record in batch:
                if matches(record.value, req.tenant, req.type_glob):
                    result.matched += 1
                    pause = pacer.delay(time.monotonic())
                    if pause >= PACE_STEP_S:  # what is due goes now, the rest after the pause
                        await hand_over()
                        await asyncio.sleep(pause)
                    headers = replay_headers(
                        list(record.headers),
                        event.id,
                        f"{record.topic}/{record.partition}/{record.offset}",
                        now,
                    )
                    chunk.append(Record(req.into, record.key, record.value, headers))
                progress.advance()
            await hand_over()
            if sum(handed.count for handed in in_flight) >= 1_000:
                await acknowledged()
        await acknowledged()
    return result
