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
from typing import Annotated, Any

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
        """Parse a record; numbers in ``data`` become exact Decimals (never floats).

        The metering worker's hot path: a record as billstream and ordinary producers write
        it is checked by hand (:func:`_plain_event`, every rule of the model) and built
        without pydantic, a few µs cheaper; anything else — a refusal, an unusual spelling —
        goes through ``model_validate``, which accepts or refuses it with its own message.
        """
        parsed = jsonexact.loads(raw)
        if cls is UsageEvent:
            event = _plain_event(parsed)
            if event is not None:
                return event
        return cls.model_validate(parsed)

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


# --- the hand-written check of a usage record (UsageEvent.from_json) ------------------------
#
# It accepts a subset of what ``UsageEvent.model_validate`` accepts, and builds the same
# event; whatever it does not accept goes to ``model_validate``. So it may be as strict as
# is convenient (a time spelled "2026-11-22 10:15:30Z" is for pydantic to judge), but it must
# never accept what pydantic refuses: tests/unit/test_usage_decode.py holds it to that.

_KNOWN = frozenset(UsageEvent.model_fields)
# the required attributes, read one by one in _plain_event
_REQUIRED = ("id", "source", "type", "subject", "time", "tenantid")
_SPECVERSION = UsageEvent.model_fields["specversion"].default
_DATACONTENTTYPE = UsageEvent.model_fields["datacontenttype"].default
_DATAVERSION = UsageEvent.model_fields["dataversion"].default
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


def _plain_event(parsed: Any) -> UsageEvent | None:
    """``UsageEvent.model_validate(parsed)`` for a plain record, or None: let pydantic judge.

    Every rule of the model, by hand: no unknown attribute; ``id``, ``source``, ``type``,
    ``subject``, ``time`` and ``tenantid`` present; the constants as they must be; each text
    a ``str`` of its length, pattern and characters; ``time`` with its offset, in the window;
    ``data`` an object that ``check_usage_data`` passes."""
    if type(parsed) is not dict or not _KNOWN.issuperset(parsed):
        return None
    try:
        id_ = parsed["id"]
        source = parsed["source"]
        type_ = parsed["type"]
        subject = parsed["subject"]
        time = parsed["time"]
        tenantid = parsed["tenantid"]
    except KeyError:  # a required attribute missing
        return None
    # type, tenantid, subject and source repeat across records: each distinct one is checked
    # once and kept, and every event holds that one string object (cheaper to hash, compare
    # and reach for the aggregation downstream than a fresh copy per record)
    if type(type_) is not str or type(tenantid) is not str or type(subject) is not str:
        return None
    type_ = _TYPES.get(type_) or _checked(_TYPES, type_, _TYPE.fullmatch(type_) is not None)
    tenantid = _TENANTS.get(tenantid) or _checked(
        _TENANTS, tenantid, _TENANT.fullmatch(tenantid) is not None
    )
    subject = _SUBJECTS.get(subject) or _checked(
        _SUBJECTS, subject, 0 < len(subject) <= 256 and _LINE_BAD.search(subject) is None
    )
    if type(source) is not str or type(id_) is not str or type(time) is not str:
        return None
    source = _SOURCES.get(source) or _checked(
        _SOURCES, source, 0 < len(source) <= 512 and _LINE_BAD.search(source) is None
    )
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
    data = parsed.get("data", _ABSENT)
    if data is _ABSENT:
        data = {}
        keys = ""
    elif type(data) is not dict:
        return None
    else:
        keys = "".join(data)
    if _LINE_BAD.search(id_ + keys) is not None:  # the id, and every key of data, one line
        return None
    if data and not plain_values(data) and usage_data_problem(data) is not None:
        return None
    if len(parsed) > len(_REQUIRED) + ("data" in parsed):  # the optional attributes
        if parsed.get("specversion", _SPECVERSION) != _SPECVERSION:
            return None
        if parsed.get("datacontenttype", _DATACONTENTTYPE) != _DATACONTENTTYPE:
            return None
        if type(parsed.get("dataversion", _DATAVERSION)) is not str:
            return None
        for name in ("correlationid", "causationid"):
            value = parsed.get(name)
            if value is not None and (
                type(value) is not str or len(value) > 256 or _TEXT_BAD.search(value)
            ):
                return None
    values = {
        "specversion": _SPECVERSION,
        "id": id_,
        "source": source,
        "type": type_,
        "time": at,
        "subject": subject,
        "datacontenttype": _DATACONTENTTYPE,
        "data": data,
        "tenantid": tenantid,
        "correlationid": parsed.get("correlationid"),
        "causationid": parsed.get("causationid"),
        "dataversion": parsed.get("dataversion", _DATAVERSION),
    }
    # what model_construct does, without its loop over the fields' defaults
    event = _new(UsageEvent)
    _set(event, "__dict__", values)
    _set(event, "__pydantic_fields_set__", set(parsed))
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event


_ABSENT: Any = object()
_new = object.__new__
_set = object.__setattr__

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
