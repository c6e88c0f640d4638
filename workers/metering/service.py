"""Metering domain logic. Pure: no I/O, no Kafka, no SQL; unit-tested directly."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal
from typing import Any, Literal, Protocol

from schemas import bounds
from schemas.envelope import new_id
from schemas.jsonpath import MISSING, compile_path, evaluate
from schemas.metering import (
    Aggregation,
    CreateMeter,
    MeterCreated,
    MeterCreatedData,
    MeterSpec,
)
from schemas.usage import UsageRecord, decode_record
from workers.metering.errors import MeterConflict, UnusableEvent

SOURCE = "billstream/metering"
HOUR = timedelta(hours=1)


# --- the domain's types (storage/metering.py stores and reads them) ---------------------


@dataclass(frozen=True)
class MeterDef:
    id: str
    tenant_id: str
    key: str
    event_type: str
    aggregation: str
    value_property: str | None
    group_by: dict[str, str]
    name: str | None = None
    description: str | None = None


@dataclass(slots=True)
class UsageDelta:
    """What one batch adds to one hourly bucket."""

    tenant_id: str
    meter_id: str
    subject: str
    groups: str  # canonical JSON object of group name -> value
    bucket: datetime
    count: int = 0
    sum: Decimal | None = None
    min: Decimal | None = None
    max: Decimal | None = None
    latest_time: datetime | None = None
    latest_value: Decimal | None = None


@dataclass(frozen=True)
class UniqueValue:
    tenant_id: str
    meter_id: str
    subject: str
    groups: str
    bucket: datetime
    value: str


@dataclass(frozen=True)
class PeriodKey:
    """One meter's usage of one subject over [start, end) (hour-aligned)."""

    meter: MeterDef
    subject: str
    start: datetime
    end: datetime


WindowSize = Literal["hour", "day", "none"]


@dataclass(frozen=True)
class UsageRow:
    """One window (and subject, and group values) of a usage query."""

    window_start: datetime | None
    window_end: datetime | None
    subject: str | None
    groups: dict[str, str | None]
    value: Decimal | None


def canonical_groups(groups: dict[str, str | None]) -> str:
    return json.dumps(groups, sort_keys=True, separators=(",", ":"))


# PostgreSQL numeric adds exactly (values up to 131072 digits before the point and 16383
# after); the default 28-digit context would round in-batch sums, so totals would depend
# on where batch boundaries fell.
_EXACT = Context(prec=131072 + 16383 + 32, Emax=MAX_EMAX, Emin=MIN_EMIN)


def decode_usage(raw: bytes) -> UsageRecord:
    """Parse a usage record; numbers in ``data`` become exact Decimals (never floats)."""
    return decode_record(raw)


class Usage(Protocol):
    """What aggregation reads of a usage event: a ``UsageRecord`` (decoded off the topic) or
    a ``UsageEvent``."""

    @property
    def tenantid(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def time(self) -> datetime: ...
    @property
    def data(self) -> dict[str, Any]: ...


_BUCKETS: dict[float, datetime] = {}
_UTC_BUCKETS: dict[tuple[int, int, int, int], datetime] = {}
_EXACT_HOURS = 2.0**32  # below this many seconds since 1970 (2106), a float second is exact


def hour_bucket(t: datetime) -> datetime:
    """The UTC hour ``t`` falls in. Memoised: a time in UTC (most) by its date and hour; any
    other by the hour's number since 1970 — ``timestamp()`` is correctly rounded, and below
    2**32 s a float is within 0.5 µs of it, so a time 1 µs before an hour's end never rounds
    into the next. Converting costs ~1 µs, these 0.2 and 0.3."""
    if t.tzinfo is UTC:
        key = t.year, t.month, t.day, t.hour
        bucket = _UTC_BUCKETS.get(key)
        if bucket is None:
            if len(_UTC_BUCKETS) > 100_000:
                _UTC_BUCKETS.clear()
            bucket = _UTC_BUCKETS[key] = t.replace(minute=0, second=0, microsecond=0)
        return bucket
    seconds = t.timestamp()
    if not 0 <= seconds < _EXACT_HOURS:
        return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hour = seconds // 3600
    bucket = _BUCKETS.get(hour)
    if bucket is None:
        if len(_BUCKETS) > 100_000:
            _BUCKETS.clear()
        bucket = _BUCKETS[hour] = t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return bucket


# JSON-number spelling for numeric strings ("12.5", "-3e2"); no underscores, no "inf". The
# same grammar the door checks (schemas/bounds.py), so what a meter reads was checked there.
_NUMERIC_TEXT = bounds.NUMERIC_TEXT


def _number(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise UnusableEvent(f"{where} is {json.dumps(value)}, not a number", field=where)
    if isinstance(value, int | Decimal):
        number = Decimal(value)
    elif isinstance(value, str) and _NUMERIC_TEXT.fullmatch(value.strip()):
        number = Decimal(value.strip())
    elif isinstance(value, str):
        raise UnusableEvent(f"{where} is {value!r}, not a number", field=where)
    else:
        raise UnusableEvent(f"{where} is a {type(value).__name__}, not a number", field=where)
    if not number.is_finite():
        raise UnusableEvent(f"{where} is {value!r}, not a finite number", field=where)
    # events read off the topic were checked when decoded (as UsageEvent.data is); this holds for
    # events built in-process too: nothing out of range is ever stored (ADR 0043)
    reason = bounds.metered_problem(number)
    if reason:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
        raise UnusableEvent(
            f"{where} is {shown}, out of range: metered values {reason}", field=where
        )
    return number


def _scalar_text(value: Any) -> str | None:
    if value is None or value is MISSING:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | Decimal):
        # one spelling per number, so 1, 1.0 and 1e0 are the same group or unique value
        return format(Decimal(value).normalize(_EXACT), "f")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class CompiledMeter:
    meter: MeterDef
    value_path: tuple[str | int, ...] | None
    group_paths: tuple[tuple[str, tuple[str | int, ...]], ...]
    value_where: str = ""  # how error messages name the value: "data.tokens"
    # the common shape, read by aggregate's inner loop without evaluate(): the value (if
    # any) and every group one property of ``data`` by name, and not unique_count
    plain: bool = False
    value_name: str = ""  # the property of data holding the value ("" for none)
    group_props: tuple[str, ...] = ()  # the property of data holding each group's value
    groups_json: dict[Any, str] = field(default_factory=dict, compare=False)  # per batch

    @classmethod
    def of(cls, meter: MeterDef) -> CompiledMeter:
        value_path = compile_path(meter.value_property) if meter.value_property else None
        group_paths = tuple(
            (name, compile_path(path)) for name, path in sorted(meter.group_by.items())
        )
        plain = (
            meter.aggregation != Aggregation.UNIQUE_COUNT
            and (value_path is None or _one_name(value_path))
            and all(_one_name(path) for _, path in group_paths)
        )
        return cls(
            meter,
            value_path,
            group_paths,
            f"data{meter.value_property[1:] if meter.value_property else ''}",
            plain,
            str(value_path[0]) if plain and value_path is not None else "",
            tuple(str(path[0]) for _, path in group_paths) if plain else (),
        )


def _one_name(path: tuple[str | int, ...]) -> bool:
    return len(path) == 1 and isinstance(path[0], str)


@dataclass
class Aggregated:
    deltas: list[UsageDelta] = field(default_factory=list)
    uniques: list[UniqueValue] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index in input, reason)


_MAX_INT = 10**bounds.MAX_INTEGER_DIGITS  # an int metered value: |v| <= this (bounds.py)


def aggregate(events: Sequence[Usage], meters: Sequence[MeterDef]) -> Aggregated:
    """Fold a batch of events into per-bucket deltas for every meter that reads them.

    An event is used by all its meters or by none: if any meter cannot read its value,
    the event is rejected (to the DLQ) with the reason, and counts nowhere.
    """
    return _aggregate(events, meters, plain=True)


def _aggregate(events: Sequence[Usage], meters: Sequence[MeterDef], *, plain: bool) -> Aggregated:
    """``aggregate``; ``plain=False`` reads every meter the general way (``_contribution``),
    which the plain way must match exactly (tests/unit/test_metering_plain.py).

    Hot path: each bucket is folded into a list [count, sum, min, max, latest time, latest
    value]; integer values (most) stay ``int`` there — exact, and far cheaper to add and
    compare than Decimals — and become Decimals once per bucket at the end (the same
    Decimals folding them one by one gives: ints are exact, every sum is exact)."""
    by_type: dict[tuple[str, str], list[CompiledMeter]] = {}
    for m in meters:
        cm = CompiledMeter.of(m)
        if not plain and cm.plain:
            cm = replace(cm, plain=False)
        by_type.setdefault((m.tenant_id, m.event_type), []).append(cm)
    out = Aggregated()
    folds: dict[tuple[str, str, str, datetime], list[Any]] = {}
    tenants: dict[str, str] = {}  # meter id -> tenant
    uniques: set[UniqueValue] = set()
    groups_json: dict[tuple[str, tuple[str | None, ...]], str] = {}
    exact_add = _EXACT.add
    for index, event in enumerate(events):
        readers = by_type.get((event.tenantid, event.type))
        if not readers:
            out.rejected.append((index, f"no meter reads event type {event.type!r}"))
            continue
        data = event.data
        plain_data = type(data) is dict
        try:
            # in order: the first meter that cannot read it says why. A plain contribution
            # of None: not plain, or something unusual in it: read the long way
            pairs: list[tuple[CompiledMeter, tuple[str, Any]]] = [
                (
                    cm,
                    (_plain_contribution(cm, data) if cm.plain and plain_data else None)
                    or _contribution(cm, event, groups_json),
                )
                for cm in readers
            ]
        except UnusableEvent as e:
            out.rejected.append((index, e.message))
            continue
        at = event.time
        bucket = hour_bucket(at)
        subject = event.subject
        for cm, (groups, value) in pairs:
            meter_id = cm.meter.id
            key = (meter_id, subject, groups, bucket)
            fold = folds.get(key)
            if value is None or type(value) is str:  # count, unique_count: the event counts
                if fold is None:
                    folds[key] = [1, None, None, None, None, None]
                    tenants[meter_id] = event.tenantid
                else:
                    fold[0] += 1
                if type(value) is str:
                    uniques.add(
                        UniqueValue(event.tenantid, meter_id, subject, groups, bucket, value)
                    )
            elif fold is None:
                folds[key] = [1, value, value, value, at, value]
                tenants[meter_id] = event.tenantid
            else:  # a meter's values are all numbers, or none is
                fold[0] += 1
                total = fold[1]
                fold[1] = (
                    total + value
                    if type(total) is int and type(value) is int
                    else exact_add(total, value)
                )
                if value < fold[2]:
                    fold[2] = value
                if value > fold[3]:
                    fold[3] = value
                latest = fold[4]
                if at > latest or (at == latest and value > fold[5]):
                    fold[4] = at
                    fold[5] = value
    # a fixed row order: concurrent upserts (two members during a rebalance) lock rows in the
    # same order and cannot deadlock each other
    deltas = out.deltas
    decimal = Decimal
    for (meter_id, subject, groups, bucket), fold in sorted(folds.items()):  # keys are unique
        count, total, low, high, latest_time, latest = fold
        deltas.append(
            UsageDelta(
                tenants[meter_id],
                meter_id,
                subject,
                groups,
                bucket,
                count,
                # ints (most values) become Decimals once here; Decimals and None stay
                decimal(total) if type(total) is int else total,
                decimal(low) if type(low) is int else low,
                decimal(high) if type(high) is int else high,
                latest_time,
                decimal(latest) if type(latest) is int else latest,
            )
        )
    out.uniques = sorted(
        uniques, key=lambda u: (u.meter_id, u.subject, u.groups, u.bucket, u.value)
    )
    return out


def _plain_contribution(cm: CompiledMeter, data: dict[str, Any]) -> tuple[str, Any] | None:
    """``_contribution`` for a plain meter (``cm.plain``) when its value is an integer in
    range or absent from the meter, and its group values are strings or missing; None for
    anything else (``_contribution`` then reads it, and refuses it if it must)."""
    props = cm.group_props
    if len(props) == 1:
        text = data.get(props[0])
        if text is not None and type(text) is not str:
            return None
        cache_key: Any = text
    else:
        texts = tuple([data.get(prop) for prop in props])
        for text in texts:
            if text is not None and type(text) is not str:
                return None
        cache_key = texts
    groups = cm.groups_json.get(cache_key)
    if groups is None:
        values = (cache_key,) if len(props) == 1 else cache_key
        groups = cm.groups_json[cache_key] = canonical_groups(
            {name: v for (name, _), v in zip(cm.group_paths, values, strict=True)}
        )
    if not cm.value_name:
        return groups, None
    value = data.get(cm.value_name)
    if type(value) is not int or not -_MAX_INT <= value <= _MAX_INT:
        return None
    return groups, value


def _contribution(
    cm: CompiledMeter,
    event: Usage,
    groups_json: dict[tuple[str, tuple[str | None, ...]], str] | None = None,
) -> tuple[str, Decimal | str | None]:
    """The canonical group JSON and the value ``event`` adds to meter ``cm``.

    ``groups_json`` caches the canonical JSON per (meter, group values) within a batch:
    a batch has far fewer distinct group tuples than events.
    """
    values = tuple([_scalar_text(evaluate(path, event.data)) for _, path in cm.group_paths])
    cache_key = (cm.meter.id, values)
    groups = groups_json.get(cache_key) if groups_json is not None else None
    if groups is None:
        groups = canonical_groups(
            {name: v for (name, _), v in zip(cm.group_paths, values, strict=True)}
        )
        if groups_json is not None:
            groups_json[cache_key] = groups
    value: Decimal | str | None = None
    if cm.value_path is not None:
        where = cm.value_where
        raw = evaluate(cm.value_path, event.data)
        if raw is MISSING:
            raise UnusableEvent(
                f"meter {cm.meter.key!r} needs {cm.meter.value_property}, which the event lacks",
                field=where,
            )
        if cm.meter.aggregation == Aggregation.UNIQUE_COUNT:
            text = _scalar_text(raw)
            if text is None:
                raise UnusableEvent(f"{where} is null; unique_count needs a value", field=where)
            value = text
        else:
            value = _number(raw, where)
    return groups, value


# --- meters ------------------------------------------------------------------------


def new_meter(command: CreateMeter) -> MeterDef:
    spec = command.data
    return MeterDef(
        id=new_id(),
        tenant_id=command.tenantid,
        key=spec.key,
        event_type=spec.event_type,
        aggregation=spec.aggregation.value,
        value_property=spec.value_property,
        group_by=dict(spec.group_by),
        name=spec.name,
        description=spec.description,
    )


def _definition(m: MeterDef) -> tuple[Any, ...]:
    return (m.event_type, m.aggregation, m.value_property, m.group_by)


def ensure_same_definition(existing: MeterDef, wanted: MeterDef) -> None:
    """Re-creating a meter identically is a no-op; changing what it counts is refused."""
    if _definition(existing) != _definition(wanted):
        raise MeterConflict(
            f"meter {wanted.key!r} already exists with a different definition "
            f"(event_type={existing.event_type!r}, aggregation={existing.aggregation!r}, "
            f"value_property={existing.value_property!r}, group_by={existing.group_by!r}); "
            "meters are immutable: create one with a new key",
            field="key",
        )


def meter_created(command: CreateMeter, meter: MeterDef) -> MeterCreated:
    spec = MeterSpec.model_validate(command.data.model_dump())
    return MeterCreated(
        source=SOURCE,
        subject=meter.key,
        data=MeterCreatedData(**spec.model_dump(), meter_id=meter.id),
        **command.caused(),
    )
