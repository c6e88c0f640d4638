"""Usage events: what producer systems emit, on ``billstream.usage.v1``.

A usage event is a CloudEvent whose ``type`` is the producer's own event type
(``llm.completion``), whose ``subject`` is the customer it is about, and whose
``data`` is a JSON object that meters read with JSONPath. ``(tenantid, source, id)``
identifies it: sending the same event twice counts once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from schemas import jsonexact
from schemas.bounds import LINE_PATTERN, EventTime, Line, ShowBounds, check_usage_data
from schemas.envelope import CloudEvent

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
        """Parse a record; numbers in ``data`` become exact Decimals (never floats)."""
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
