"""The CloudEvents 1.0 envelope every message on every billstream topic uses.

Structured JSON mode: the attributes and ``data`` are one JSON object. Extensions:
``tenantid`` (required), ``correlationid``, ``causationid``, ``dataversion``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import uuid6
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from schemas.bounds import LineValue, TextValue

TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"

TenantId = str


WIRE = {"wire": True}  # validation context for messages read off a topic


def new_id() -> str:
    """A fresh UUIDv7 (time-ordered) as a string."""
    return str(uuid6.uuid7())


def utcnow() -> datetime:
    return datetime.now(UTC)


class CloudEvent(BaseModel):
    """Base envelope. Subclasses narrow ``type`` to a Literal and ``data`` to a model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    # no control characters in what is stored (docs/adr/0043); validated, not in the schema
    id: LineValue = Field(default_factory=new_id, min_length=1, max_length=256)
    source: LineValue = Field(min_length=1, max_length=512)
    type: LineValue = Field(min_length=1, max_length=256)
    time: AwareDatetime = Field(default_factory=utcnow)
    subject: LineValue | None = Field(default=None, min_length=1, max_length=256)
    datacontenttype: Literal["application/json"] = "application/json"
    data: Any
    tenantid: str = Field(pattern=TENANT_ID_PATTERN)
    correlationid: TextValue | None = Field(default=None, max_length=256)
    causationid: TextValue | None = Field(default=None, max_length=256)
    dataversion: str = "1"

    @model_validator(mode="before")
    @classmethod
    def _identity_on_the_wire(cls, data: Any, info: ValidationInfo) -> Any:
        """A message read off a topic must carry its own id and time: defaulting them would
        give every redelivery a new identity, and the inbox could not deduplicate it."""
        if info.context is not None and info.context.get("wire") and isinstance(data, dict):
            missing = [name for name in ("id", "time") if name not in data]
            if missing:
                raise ValueError(f"a message on a topic needs {' and '.join(missing)}")
        return data

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    def caused(self, **kwargs: Any) -> dict[str, Any]:
        """Envelope attributes for a message caused by this one (same tenant and correlation)."""
        return {
            "tenantid": self.tenantid,
            "correlationid": self.correlationid or self.id,
            "causationid": self.id,
            **kwargs,
        }


class AnyEvent(CloudEvent):
    """Any event on an events topic, read for its envelope only: ``data`` is not interpreted
    and unknown extension attributes are tolerated (any CloudEvents producer may write to
    these topics). ``tenantid`` is any non-empty string here ("*" etc.): a consumer skips
    what is not a tenant's rather than rejecting it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    tenantid: str = Field(min_length=1, max_length=256)
    data: Any = None
