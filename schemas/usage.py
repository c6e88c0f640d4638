"""Usage events: what producer systems emit, on ``billstream.usage.v1``.

A usage event is a CloudEvent whose ``type`` is the producer's own event type
(``llm.completion``), whose ``subject`` is the customer it is about, and whose
``data`` is a JSON object that meters read with JSONPath. ``(tenantid, source, id)``
identifies it: sending the same event twice counts once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from schemas import jsonexact
from schemas.bounds import (
    LINE_PATTERN,
    TIME_MAX,
    TIME_MIN,
    EventTime,
    Line,
    ShowBounds,
    check_usage_data,
    plain_values,
    usage_data_problem,
)
from schemas.envelope import TENANT_ID_PATTERN, CloudEvent

EVENT_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/\-]{0,254}$"

UsageData = Annotated[
    dict[str, Any],
    AfterValidator(check_usage_data),
    # its keys, as OpenAPI can say it (nested objects' keys and the numbers are checked too)
    ShowBounds({"propertyNames": {"pattern": LINE_PATTERN}}),
]
"""Event data: every number in it (and every string that spells one: meters read those as
numbers) finite, at most 10**15 in magnitude, with at most 12 decimal places; no control
character but tab, newline and carriage return in its strings (docs/adr/0043)."""


class UsageEventIn(BaseModel):
    """One event as a client sends it to ``POST /v1/events`` (the tenant comes from the API key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: str = Field(default="1.0", pattern=r"^1\.0$")
    id: Line = Field(min_length=1, max_length=256)
    source: Line = Field(min_length=1, max_length=512)
    type: str = Field(pattern=EVENT_TYPE_PATTERN)
    subject: Line = Field(min_length=1, max_length=256)
    time: EventTime = Field(
        description="With an offset; its UTC form from 1970-01-01T00:00:00Z up to (not "
        "including) 2100-01-01T00:00:00Z."
    )
    datacontenttype: str = Field(default="application/json", pattern=r"^application/json$")
    data: UsageData = Field(
        default_factory=dict,
        description="Numbers (and strings that spell numbers) finite, at most 10**15 in "
        "magnitude, at most 12 decimal places.",
    )


class UsageEvent(CloudEvent):
    """A usage event on the topic: the same fields plus the tenant."""

    # Required, never generated: (tenantid, source, id) deduplicates redeliveries, and an id
    # invented while decoding a record would differ on every delivery.
    id: Line = Field(min_length=1, max_length=256)
    type: str = Field(pattern=EVENT_TYPE_PATTERN)
    subject: Line = Field(min_length=1, max_length=256)
    time: EventTime
    data: UsageData = Field(default_factory=dict)

    @classmethod
    def from_client(cls, event: UsageEventIn, tenant_id: str) -> UsageEvent:
        """The topic form of an already validated client event (not validated twice)."""
        return cls.model_construct(
            id=event.id,
            source=event.source,
            type=event.type,
            subject=event.subject,
            time=event.time,
            data=event.data,
            tenantid=tenant_id,
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> UsageEvent:
        """Parse a record; numbers in ``data`` become exact Decimals (never floats). Accepts
        or refuses it with pydantic's own message. (The metering worker reads records with
        :func:`decode_record`, which builds the same values a few µs cheaper.)"""
        return cls.model_validate(jsonexact.loads(raw))

    def to_json(self) -> bytes:
        """Numbers in ``data`` are written exactly as JSON numbers."""
        attrs = self.model_dump(mode="json", exclude={"data"}, exclude_none=True)
        head = jsonexact.dumps(attrs)
        return (head[:-1] + ',"data":' + jsonexact.dumps(self.data) + "}").encode()

    @classmethod
    def encode_from_client(cls, events: Sequence[UsageEventIn], tenant_id: str) -> list[bytes]:
        """``[cls.from_client(e, tenant_id).to_json() for e in events]``, byte for byte,
        without a model per event (the ingress hot path; ``data`` as parsed from JSON)."""
        fields = cls.model_fields
        specversion = fields["specversion"].default
        datacontenttype = fields["datacontenttype"].default
        dataversion = fields["dataversion"].default
        times = _TIMES.dump_python([e.time for e in events], mode="json")
        return [
            jsonexact.dumps_parsed(
                {
                    "specversion": specversion,
                    "id": e.id,
                    "source": e.source,
                    "type": e.type,
                    "time": time,
                    "subject": e.subject,
                    "datacontenttype": datacontenttype,
                    "tenantid": tenant_id,
                    "dataversion": dataversion,
                    "data": e.data,
                }
            ).encode()
            for e, time in zip(events, times, strict=True)
        ]


_TIMES: TypeAdapter[list[datetime]] = TypeAdapter(list[AwareDatetime])


# --- what the metering worker reads: a usage record, checked by hand ---------------------


class UsageRecord(msgspec.Struct, frozen=True, gc=False):
    """A usage event as the metering worker reads it off the topic: the attributes it and the
    runtime use, as ``UsageEvent`` would hold them (:func:`decode_record` builds it).

    A struct built by one C call rather than a pydantic model (a dict, a set and four
    attributes set by hand cost ~1 µs an event); not tracked by the cyclic GC (it holds no
    cycle). The constant attributes (``specversion``, ``datacontenttype``, ``dataversion``)
    are checked, not kept: nothing downstream reads them."""

    id: str
    source: str
    type: str
    subject: str
    time: datetime
    data: dict[str, Any]
    tenantid: str
    correlationid: str | None = None
    causationid: str | None = None

    @classmethod
    def of(cls, event: UsageEvent) -> UsageRecord:
        """The record of a validated event."""
        return cls(
            event.id,
            event.source,
            event.type,
            event.subject,
            event.time,
            event.data,
            event.tenantid,
            event.correlationid,
            event.causationid,
        )


def decode_record(raw: bytes | str) -> UsageRecord:
    """``UsageRecord.of(UsageEvent.from_json(raw))``, raising what it raises: a record as
    billstream and ordinary producers write it is parsed by msgspec into its JSON types and
    checked by hand (:func:`_plain_event`, every rule of the model, docs/adr/0058); anything
    else — a refusal, an unusual spelling — goes through ``model_validate``, which accepts or
    refuses it with its own message."""
    record = _plain_event(raw)
    if record is not None:
        return record
    return UsageRecord.of(UsageEvent.model_validate(jsonexact.loads(raw)))


# It accepts a subset of what ``UsageEvent.model_validate`` accepts, and builds the same
# values; whatever it does not accept goes to ``model_validate``. So it may be as strict as
# is convenient (a time spelled "2026-11-22 10:15:30Z" is for pydantic to judge), but it must
# never accept what pydantic refuses: tests/unit/test_usage_decode.py holds it to that.

# the required attributes (tests/unit/test_usage_decode.py: the model's required fields)
_REQUIRED = ("id", "source", "type", "subject", "time", "tenantid")
_SPECVERSION = UsageEvent.model_fields["specversion"].default
_DATACONTENTTYPE = UsageEvent.model_fields["datacontenttype"].default
# schemas/bounds.py's: a Line has no C0 control, no DEL, no lone surrogate; a Text may hold
# tab, newline and carriage return
_LINE_BAD = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_TEXT_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
# the fields' patterns, whole-string (``$`` would also match before a final newline)
_TYPE = re.compile(EVENT_TYPE_PATTERN.removeprefix("^").removesuffix("$"))
_TENANT = re.compile(TENANT_ID_PATTERN.removeprefix("^").removesuffix("$"))
# RFC 3339 as producers write it: ASCII digits, "T", 0-6 decimals, "Z" or "±hh:mm"
_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)


class _Record(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A usage record's attributes in their JSON types, as msgspec parses them: unknown
    attributes, a missing required one or a wrong JSON type make it fail (then pydantic
    judges). Numbers in ``data`` that are not integers become Decimals (``float_hook``).
    An absent optional attribute is its default (an explicit null of a nullable one too:
    the model holds None for both)."""

    id: str
    source: str
    type: str
    subject: str
    time: str
    tenantid: str
    specversion: str = _SPECVERSION
    datacontenttype: str = _DATACONTENTTYPE
    dataversion: str = ""
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    correlationid: str | None = None
    causationid: str | None = None


# strict: JSON types as they are (no "1" for 1); the same numbers as jsonexact.loads
_decode_record = msgspec.json.Decoder(_Record, float_hook=Decimal).decode


def _plain_event(raw: bytes | str) -> UsageRecord | None:
    """``UsageRecord.of(UsageEvent.model_validate(jsonexact.loads(raw)))`` for a plain
    record, or None: let pydantic judge.

    Every rule of the model, by hand, after msgspec has checked the JSON types (no unknown
    attribute; ``id``, ``source``, ``type``, ``subject``, ``time`` and ``tenantid`` present,
    strings): the constants as they must be; each text of its length, pattern and
    characters; ``time`` with its offset, in the window; ``data`` an object that
    ``check_usage_data`` passes. msgspec refuses what the standard library's parser refuses
    (control characters in strings, NaN, trailing data, invalid UTF-8) and some it accepts
    (an escaped lone surrogate): those go to pydantic too."""
    try:
        record = _decode_record(raw)
    except (msgspec.MsgspecError, UnicodeError):  # a str with a lone surrogate: not UTF-8
        return None
    # type, tenantid, subject and source repeat across records: each distinct one is checked
    # once and kept, and every event holds that one string object (cheaper to hash, compare
    # and reach for the aggregation downstream than a fresh copy per record)
    type_ = record.type
    type_ = _TYPES.get(type_) or _checked(_TYPES, type_, _TYPE.fullmatch(type_) is not None)
    tenantid = record.tenantid
    tenantid = _TENANTS.get(tenantid) or _checked(
        _TENANTS, tenantid, _TENANT.fullmatch(tenantid) is not None
    )
    subject = record.subject
    subject = _SUBJECTS.get(subject) or _checked(
        _SUBJECTS, subject, 0 < len(subject) <= 256 and _LINE_BAD.search(subject) is None
    )
    source = record.source
    source = _SOURCES.get(source) or _checked(
        _SOURCES, source, 0 < len(source) <= 512 and _LINE_BAD.search(source) is None
    )
    id_, time = record.id, record.time
    if (
        not type_
        or not tenantid
        or not subject
        or not source
        or not 0 < len(id_) <= 256
        or _TIME.fullmatch(time) is None
    ):
        return None
    try:
        at = datetime.fromisoformat(time)
    except ValueError:  # e.g. hour 24, second 60
        return None
    if not TIME_MIN <= at < TIME_MAX:
        return None
    data = record.data
    line = id_ + "".join(data)  # the id, and every key of data, one line (printable: certainly)
    if not line.isprintable() and _LINE_BAD.search(line) is not None:
        return None
    if data and not plain_values(data) and usage_data_problem(data) is not None:
        return None
    if record.specversion != _SPECVERSION or record.datacontenttype != _DATACONTENTTYPE:
        return None
    correlationid, causationid = record.correlationid, record.causationid
    for value in (correlationid, causationid):
        if value is not None and (len(value) > 256 or _TEXT_BAD.search(value)):
            return None
    return UsageRecord(id_, source, type_, subject, at, data, tenantid, correlationid, causationid)


# the distinct texts met so far that passed their field's check (type, tenantid, subject,
# source), each kept as one string object; emptied when it grows past _MEMO_SIZE
_TYPES: dict[str, str] = {}
_TENANTS: dict[str, str] = {}
_SUBJECTS: dict[str, str] = {}
_SOURCES: dict[str, str] = {}
_MEMO_SIZE = 100_000


def _checked(memo: dict[str, str], text: str, fine: bool) -> str:
    """``text`` remembered in ``memo`` if it passed its check (``fine``), else ``""``."""
    if not fine:
        return ""
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[text] = text
    return text
