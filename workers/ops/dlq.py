"""``billstream dlq list|show|redrive``: read dead-letter topics and re-publish fixed
records to the topics they came from.

A redriven record is the original (key, value, headers) without the ``billstream-dlq-*``
headers, plus ``billstream-redrive-*`` headers saying from where, by which audit event,
and how many times it has been redriven. If it still fails, the runtime dead-letters it
again (a new DLQ record, carrying that count): it comes back to the DLQ, never loops.
Each DLQ record is redriven at most once (recorded in PostgreSQL) unless ``--again``, and
a record redriven ``dlq_max_redrives`` times is left alone unless ``--force``.
"""

from __future__ import annotations

import base64
import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas import topics
from schemas.ops import ALL_TENANTS, OpsRedriven, RedrivenData, RedrivenRecord
from storage.ops import OpsRepository
from workers.ops import audit, kafka
from workers.ops.errors import OpsError, UsageError, database_failed
from workers.ops.progress import NoProgress, Progress
from workers.runtime.database import database
from workers.runtime.publisher import Record
from workers.runtime.tx import DLQ_HEADER_PREFIX
from workers.settings import Settings

REDRIVE_PREFIX = "billstream-redrive-"
REDRIVE_COUNT = REDRIVE_PREFIX + "count"
REDRIVE_OF = REDRIVE_PREFIX + "of"
REDRIVE_ID = REDRIVE_PREFIX + "id"
REDRIVE_AT = REDRIVE_PREFIX + "at"

# --- the pure core -------------------------------------------------------------------------


def dlq_topic_of(name: str) -> str:
    """``billstream.usage.v1`` or ``billstream.usage.v1.dlq`` → the dead-letter topic."""
    return name if name.endswith(topics.DLQ_SUFFIX) else topics.dlq(name)


def _text(v: bytes | None) -> str:
    return (v or b"").decode("utf-8", "replace")


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class DlqEntry:
    dlq_topic: str
    partition: int
    offset: int
    timestamp: int  # ms
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    redriven_at: datetime | None = None

    @property
    def header(self) -> dict[str, str]:
        return {k: _text(v) for k, v in self.headers}

    def _dlq(self, name: str) -> str | None:
        return self.header.get(DLQ_HEADER_PREFIX + name)

    @property
    def error(self) -> str | None:
        return self._dlq("error")

    @property
    def reason(self) -> str | None:
        return self._dlq("reason")

    @property
    def original_topic(self) -> str | None:
        return self._dlq("topic")

    @property
    def original_partition(self) -> int | None:
        return _int(self._dlq("partition"))

    @property
    def original_offset(self) -> int | None:
        return _int(self._dlq("offset"))

    @property
    def group(self) -> str | None:
        return self._dlq("group")

    @property
    def at(self) -> str | None:
        return self._dlq("at")

    @property
    def redrive_count(self) -> int:
        return _int(self.header.get(REDRIVE_COUNT)) or 0

    @property
    def event(self) -> dict[str, Any]:
        """The CloudEvents attributes of the value, when it is one ({} otherwise)."""
        try:
            parsed = json.loads(self.value)
        except (ValueError, UnicodeDecodeError):
            return {}
        return parsed if isinstance(parsed, dict) else {}

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    def summary(self) -> dict[str, Any]:
        event = self.event
        return {
            "dlq_topic": self.dlq_topic,
            "partition": self.partition,
            "offset": self.offset,
            "error": self.error,
            "reason": self.reason,
            "topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "group": self.group,
            "at": self.at,
            "id": event.get("id"),
            "type": event.get("type"),
            "tenantid": event.get("tenantid"),
            "redrive_count": self.redrive_count,
            "redriven_at": self.redriven_at.isoformat() if self.redriven_at else None,
        }

    def detail(self) -> dict[str, Any]:
        """Everything, for ``dlq show``: the value as JSON when it is JSON."""
        try:
            value: Any = json.loads(self.value)
        except (ValueError, UnicodeDecodeError):
            value = {"base64": base64.b64encode(self.value).decode()}
        return {
            **self.summary(),
            "timestamp": datetime.fromtimestamp(self.timestamp / 1000, UTC).isoformat(),
            "key": _text(self.key) if self.key is not None else None,
            "headers": self.header,
            "value": value,
        }


def redrive_headers(entry: DlqEntry, audit_id: str, at: datetime) -> list[tuple[str, bytes]]:
    """The original headers (no ``billstream-dlq-*``, no earlier redrive marks) plus this
    redrive's marks."""
    kept = [
        (k, v)
        for k, v in entry.headers
        if not k.startswith(DLQ_HEADER_PREFIX) and not k.startswith(REDRIVE_PREFIX)
    ]
    return [
        *kept,
        (REDRIVE_COUNT, str(entry.redrive_count + 1).encode()),
        (REDRIVE_OF, f"{entry.dlq_topic}/{entry.partition}/{entry.offset}".encode()),
        (REDRIVE_ID, audit_id.encode()),
        (REDRIVE_AT, at.isoformat().encode()),
    ]


def parse_ref(text: str) -> tuple[int, int]:
    """``P:O`` (partition and offset of a DLQ record)."""
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise UsageError(f"{text!r} is not PARTITION:OFFSET (e.g. 0:12)", option="--record")
    return int(partition), int(offset)


@dataclass(frozen=True)
class Selection:
    records: tuple[tuple[int, int], ...] = ()
    error: str | None = None
    tenant: str | None = None
    type_glob: str | None = None
    all: bool = False

    def validate(self) -> None:
        if not (self.records or self.error or self.tenant or self.type_glob or self.all):
            raise UsageError(
                "select what to redrive: --record P:O (repeatable), --error CODE, --tenant, "
                "--type GLOB, or --all",
                option="--record",
            )

    def picks(self, e: DlqEntry) -> bool:
        if self.records and (e.partition, e.offset) not in self.records:
            return False
        if self.error is not None and e.error != self.error:
            return False
        event = e.event
        if self.tenant is not None and event.get("tenantid") != self.tenant:
            return False
        ce_type = event.get("type")
        return self.type_glob is None or (
            isinstance(ce_type, str) and fnmatch.fnmatchcase(ce_type, self.type_glob)
        )


@dataclass(frozen=True)
class Skipped:
    entry: DlqEntry
    why: str


def choose(
    entries: Sequence[DlqEntry],
    selection: Selection,
    *,
    max_redrives: int,
    again: bool = False,
    force: bool = False,
) -> tuple[list[DlqEntry], list[Skipped]]:
    """Which selected entries to redrive, and why the others selected are not."""
    chosen: list[DlqEntry] = []
    skipped: list[Skipped] = []
    for e in entries:
        if not selection.picks(e):
            continue
        if e.original_topic is None:
            skipped.append(Skipped(e, "no billstream-dlq-topic header: origin unknown"))
        elif e.redriven_at is not None and not again:
            skipped.append(Skipped(e, f"already redriven at {e.redriven_at.isoformat()}"))
        elif e.redrive_count >= max_redrives and not force:
            skipped.append(
                Skipped(e, f"redriven {e.redrive_count} times already (limit {max_redrives})")
            )
        else:
            chosen.append(e)
    found = {(e.partition, e.offset) for e in entries}
    for ref in selection.records:
        if ref not in found:
            raise UsageError(f"no record {ref[0]}:{ref[1]} on this DLQ", option="--record")
    return chosen, skipped


# --- the I/O ---------------------------------------------------------------------------------


async def _redriven(settings: Settings, dlq_topic: str) -> dict[tuple[int, int], datetime]:
    try:
        async with (
            database(settings, pool_size=1) as jobs,
            jobs.transaction("ops.dlq") as tx,
        ):
            done = await tx.repo(OpsRepository).redrives(dlq_topic)
    except Exception as e:
        if not database_failed(e):
            raise
        raise OpsError(
            f"cannot read redrive records from PostgreSQL ({type(e).__name__})",
            option="BILLSTREAM_DATABASE_URL",
        ) from None
    return {k: r.redriven_at for k, r in done.items()}


async def dlq_topics(settings: Settings) -> list[str]:
    """Every billstream dead-letter topic that exists."""
    async with kafka.consumer(settings) as c:
        existing = await c.topics()
    return [t for t in topics.all_topic_names() if t.endswith(topics.DLQ_SUFFIX) and t in existing]


async def entries(
    settings: Settings, dlq_topic: str, progress: Progress | None = None
) -> list[DlqEntry]:
    """Every record on ``dlq_topic``, with when it was redriven (if it was)."""
    progress = progress or NoProgress()
    async with kafka.consumer(settings) as c:
        tps = await kafka.topic_partitions(c, dlq_topic)
        bounds = await kafka.log_bounds(c, tps)
        progress.begin(f"reading {dlq_topic}", sum(b.size for b in bounds.values()))
        records: list[kafka.Record] = []
        ranges = {tp: (b.beginning, b.end) for tp, b in bounds.items()}
        async for batch in kafka.read_range(c, ranges):
            records.extend(batch)
            progress.advance(len(batch))
    redriven = await _redriven(settings, dlq_topic)
    return [
        DlqEntry(
            dlq_topic,
            r.partition,
            r.offset,
            r.timestamp,
            r.key,
            r.value or b"",
            tuple((k, v or b"") for k, v in r.headers),
            redriven.get((r.partition, r.offset)),
        )
        for r in sorted(records, key=lambda r: (r.partition, r.offset))
    ]


async def show(settings: Settings, dlq_topic: str, partition: int, offset: int) -> DlqEntry:
    async with kafka.consumer(settings) as c:
        [tp] = await kafka.topic_partitions(c, dlq_topic, partition)
        r = await kafka.read_one(c, tp, offset)
    if r is None:
        raise OpsError(f"no record at {partition}:{offset} on {dlq_topic}", option="--record")
    redriven = await _redriven(settings, dlq_topic)
    return DlqEntry(
        dlq_topic,
        r.partition,
        r.offset,
        r.timestamp,
        r.key,
        r.value or b"",
        tuple((k, v or b"") for k, v in r.headers),
        redriven.get((r.partition, r.offset)),
    )


@dataclass
class RedriveResult:
    dlq_topic: str
    dry_run: bool
    chosen: list[DlqEntry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    redriven: int = 0
    audit_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dlq_topic": self.dlq_topic,
            "dry_run": self.dry_run,
            "redriven": self.redriven,
            "audit_id": self.audit_id,
            "records": [e.summary() for e in self.chosen],
            "skipped": [{**s.entry.summary(), "why": s.why} for s in self.skipped],
        }


async def redrive(
    settings: Settings,
    dlq_topic: str,
    selection: Selection,
    *,
    actor: str,
    reason: str,
    dry_run: bool = False,
    again: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> RedriveResult:
    selection.validate()
    if not reason.strip():
        raise UsageError("say why (it goes into the audit event)", option="--reason")
    progress = progress or NoProgress()
    found = await entries(settings, dlq_topic, progress)
    chosen, skipped = choose(
        found, selection, max_redrives=settings.dlq_max_redrives, again=again, force=force
    )
    result = RedriveResult(dlq_topic, dry_run, chosen, skipped)
    if dry_run or not chosen:
        return result
    async with kafka.consumer(settings) as c:
        existing = await c.topics()
    missing = sorted({e.original_topic or "" for e in chosen if e.original_topic not in existing})
    if missing:
        raise OpsError(f"the original topic(s) {missing} do not exist", option="--record")
    tenants = {e.event.get("tenantid") for e in chosen}
    tenant = tenants.pop() if len(tenants) == 1 else None
    event = OpsRedriven(
        source=audit.SOURCE,
        tenantid=tenant if isinstance(tenant, str) and selection.tenant else ALL_TENANTS,
        subject=dlq_topic,
        data=RedrivenData(
            actor=actor,
            reason=reason,
            host=audit.hostname(),
            dlq_topic=dlq_topic,
            records=[
                RedrivenRecord(
                    dlq_partition=e.partition,
                    dlq_offset=e.offset,
                    topic=e.original_topic or "",
                    partition=e.original_partition,
                    offset=e.original_offset,
                    error=e.error,
                )
                for e in chosen
            ],
        ),
    )
    await audit.record(settings, event)
    result.audit_id = event.id
    now = datetime.now(UTC)
    progress.begin(f"redriving {len(chosen)} record(s) from {dlq_topic}", len(chosen))
    async with (
        database(settings, pool_size=1) as jobs,
        jobs.transaction("ops.dlq.redrive") as tx,
        kafka.publisher(settings) as p,
    ):
        # claimed in the transaction that commits only after every record is acknowledged:
        # a concurrent redrive of the same records claims nothing and publishes nothing
        claimed = await tx.repo(OpsRepository).claim_redrives(
            dlq_topic,
            [(e.partition, e.offset, e.original_topic or "") for e in chosen],
            audit_id=event.id,
            actor=actor,
            again=again,
        )
        records: list[Record] = []
        for e in chosen:
            if (e.partition, e.offset) not in claimed:
                result.skipped.append(Skipped(e, "redriven concurrently by someone else"))
                continue
            headers = redrive_headers(e, event.id, now)
            records.append(Record(e.original_topic or "", e.key, e.value, headers))
            progress.advance()
        await p.publish(records)
        result.redriven = len(records)
    result.chosen = [e for e in chosen if (e.partition, e.offset) in claimed]
    return result
