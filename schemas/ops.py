"""Operations events (``billstream.events.ops.v1``): who replayed or redrove what, and why;
and which job items the workers quarantined (ADR 0044).

The CLI publishes them (``acks=all``) *before* doing the work, so no replay or redrive
happens unaudited (docs/adr/0020-ops-audit-before-the-work.md). Operations may span every
tenant: ``tenantid`` is then ``*``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.envelope import TENANT_ID_PATTERN, CloudEvent

ALL_TENANTS = "*"
OPS_TENANT_PATTERN = rf"^(\*|{TENANT_ID_PATTERN[1:-1]})$"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PartitionRange(_Model):
    """The offsets a replay covers in one partition: ``[start, end)``."""

    partition: int = Field(ge=0)
    start: int = Field(ge=0, description="First offset (inclusive)")
    end: int | None = Field(
        default=None,
        ge=0,
        description="Offset after the last one (exclusive); null for a group reset, which "
        "re-reads up to whatever the group had committed",
    )


class ReplayedData(_Model):
    actor: str = Field(
        min_length=1, max_length=256, description="Who ran it (--actor, or the OS user)"
    )
    reason: str = Field(min_length=1, max_length=2048, description="Why (--reason)")
    host: str = Field(max_length=256, description="The machine it ran on")
    mode: Literal["group", "topic"] = Field(
        description="'group': the consumer group's offsets were moved back; 'topic': the "
        "selected records were re-published to another (or the same) topic"
    )
    topic: str = Field(description="The topic read")
    group: str | None = Field(default=None, description="The consumer group reset (mode 'group')")
    into: str | None = Field(default=None, description="The topic published to (mode 'topic')")
    start: str = Field(description="--from as given: an offset, a time (RFC 3339) or 'earliest'")
    end: str | None = Field(default=None, description="--to as given (mode 'topic')")
    tenant: str | None = Field(default=None, description="Only this tenant's messages (--tenant)")
    type_glob: str | None = Field(default=None, description="Only these CloudEvents types (--type)")
    partitions: list[PartitionRange] = Field(description="The resolved offset ranges")
    messages: int = Field(
        ge=0,
        description="How many records the range holds (mode 'group': how many the group "
        "re-reads; mode 'topic': how many records are read before the filters)",
    )


class OpsReplayed(CloudEvent):
    """A replay was started (published before the first record is replayed)."""

    type: Literal["ops.replayed"] = "ops.replayed"
    tenantid: str = Field(
        pattern=OPS_TENANT_PATTERN, description="The tenant replayed (--tenant), or '*' for all"
    )
    data: ReplayedData


class RedrivenRecord(_Model):
    dlq_partition: int = Field(ge=0)
    dlq_offset: int = Field(ge=0)
    topic: str = Field(description="The original topic it is re-published to")
    partition: int | None = Field(default=None, description="Its original partition")
    offset: int | None = Field(default=None, description="Its original offset")
    error: str | None = Field(default=None, description="billstream-dlq-error of the record")


class RedrivenData(_Model):
    actor: str = Field(min_length=1, max_length=256)
    reason: str = Field(min_length=1, max_length=2048)
    host: str = Field(max_length=256)
    dlq_topic: str
    records: list[RedrivenRecord]


class OpsRedriven(CloudEvent):
    """Dead-lettered records are being re-published to their original topics."""

    type: Literal["ops.redriven"] = "ops.redriven"
    tenantid: str = Field(
        pattern=OPS_TENANT_PATTERN, description="The tenant redriven (--tenant), or '*' for all"
    )
    data: RedrivenData


class QuarantinedData(_Model):
    quarantine_id: str = Field(description="Show it: billstream quarantine show <id>")
    job: str = Field(description="The job step that failed, e.g. 'invoicing.close_periods'")
    kind: str = Field(
        description="What was isolated: 'subscription', 'invoice', 'billing_run', "
        "'webhook_message', …"
    )
    item_id: str = Field(description="Its id")
    reason: str = Field(description="Why processing it failed")
    error: str = Field(description="The error's type")
    quarantined_at: AwareDatetime


class OpsQuarantined(CloudEvent):
    """A job step failed permanently on one item of a tenant's: the item is set aside (not
    processed again until released) and the rest of the work carried on."""

    type: Literal["ops.quarantined"] = "ops.quarantined"
    data: QuarantinedData


EVENTS: tuple[type[CloudEvent], ...] = (OpsReplayed, OpsRedriven, OpsQuarantined)

__all__ = [
    "ALL_TENANTS",
    "EVENTS",
    "OpsRedriven",
    "OpsReplayed",
    "PartitionRange",
    "RedrivenData",
    "RedrivenRecord",
    "ReplayedData",
]
