"""Metering commands (``billstream.commands.metering.v1``) and events
(``billstream.events.metering.v1``)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from schemas.bounds import Line, ShowBounds, Text, present, show_model_bounds
from schemas.decimals import DecimalStr
from schemas.envelope import CloudEvent
from schemas.jsonpath import JsonPathError, compile_path
from schemas.usage import EVENT_TYPE_PATTERN

METER_KEY_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
GROUP_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_GROUP_BY = 16
# the JSONPath subset compile_path reads (schemas/jsonpath.py), for OpenAPI: "$" and one or
# more steps: .name, [0], ['name'] or ["name"]
JSONPATH_PATTERN = r"""^\$(\.[A-Za-z_$][A-Za-z0-9_$\-]*|\[-?[0-9]+\]|\['[^']*'\]|\["[^"]*"\])+$"""
JsonPathText = Annotated[Line, ShowBounds({"pattern": JSONPATH_PATTERN})]


class Aggregation(StrEnum):
    COUNT = "count"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    UNIQUE_COUNT = "unique_count"
    LATEST = "latest"


class MeterSpec(BaseModel):
    """A meter, OpenMeter-style: which events it reads, what value, and how to aggregate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(pattern=METER_KEY_PATTERN, description="Unique per tenant, e.g. 'tokens'.")
    name: Line | None = Field(default=None, max_length=256)
    description: Text | None = Field(default=None, max_length=2048)
    event_type: str = Field(pattern=EVENT_TYPE_PATTERN, description="CloudEvents type it reads.")
    aggregation: Aggregation
    value_property: JsonPathText | None = Field(
        default=None,
        validate_default=True,  # so a missing one is reported against this field
        description="JSONPath into the event data; every aggregation but count.",
    )
    group_by: Annotated[
        dict[str, JsonPathText],
        # OpenAPI only (the published schema keeps what it said): what _valid_groups checks
        ShowBounds(
            {"propertyNames": {"pattern": GROUP_NAME_PATTERN}, "maxProperties": MAX_GROUP_BY}
        ),
    ] = Field(default_factory=dict, description="Group name to JSONPath into the event data.")

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # what _valid_value_path refuses, said in OpenAPI: count reads no value; the others do
        rule = {
            "if": {"required": ["aggregation"], "properties": {"aggregation": {"const": "count"}}},
            "then": {"properties": {"value_property": {"type": "null"}}},
            "else": present("value_property"),
        }
        return show_model_bounds(cls is MeterSpec, core_schema, handler, rule)

    @field_validator("value_property")
    @classmethod
    def _valid_value_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        aggregation = info.data.get("aggregation")  # absent when it was itself invalid
        if aggregation is Aggregation.COUNT and v is not None:
            raise ValueError("must be omitted for aggregation 'count'")
        if aggregation is not None and aggregation is not Aggregation.COUNT and v is None:
            raise ValueError(f"required for aggregation '{aggregation}'")
        if v is not None:
            try:
                compile_path(v)
            except JsonPathError as e:
                raise ValueError(str(e)) from None
        return v

    @field_validator("group_by")
    @classmethod
    def _valid_groups(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_GROUP_BY:
            raise ValueError(f"at most {MAX_GROUP_BY} groups")
        for name, path in v.items():
            if not re.fullmatch(GROUP_NAME_PATTERN, name):
                raise ValueError(f"group name {name!r} must match {GROUP_NAME_PATTERN}")
            try:
                compile_path(path)
            except JsonPathError as e:
                raise ValueError(f"group {name!r}: {e}") from None
        return v


# --- commands --------------------------------------------------------------------


class CreateMeter(CloudEvent):
    """Define a meter. Re-sending the identical definition succeeds; a different one fails."""

    type: Literal["CreateMeter"] = "CreateMeter"
    data: MeterSpec


# One command so far; this becomes a discriminated union on `type` when a second arrives.
MeteringCommand = CreateMeter


# --- events ----------------------------------------------------------------------


class MeterCreatedData(MeterSpec):
    meter_id: str


class MeterCreated(CloudEvent):
    type: Literal["meter.created"] = "meter.created"
    data: MeterCreatedData


class UsageTotalsData(BaseModel):
    """A subject's new total on one meter over one period (an event-time hour)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    meter_id: str
    meter: str = Field(pattern=METER_KEY_PATTERN, description="The meter's key.")
    aggregation: Aggregation
    subject: str = Field(min_length=1, max_length=256)
    period_start: AwareDatetime = Field(description="The hour bucket's start (UTC).")
    period_end: AwareDatetime = Field(description="period_start + 1 hour.")
    total: DecimalStr | None = Field(
        default=None,
        description="The meter's value for the subject over the period, every group "
        "combined, after this batch (exact decimal string; null for min/max/latest of "
        "events without a value).",
    )
    events: int = Field(ge=1, description="How many events of this batch changed it.")


class UsageTotalsChanged(CloudEvent):
    """Emitted once per batch for each (subject, meter, hour) the batch touched, never once
    per raw event; several batches touching the same hour emit one each, in order."""

    type: Literal["usage.totals_changed"] = "usage.totals_changed"
    subject: str = Field(min_length=1, max_length=256)
    data: UsageTotalsData


MeteringEvent = Annotated[MeterCreated | UsageTotalsChanged, Field(discriminator="type")]

COMMANDS: tuple[type[CloudEvent], ...] = (CreateMeter,)
EVENTS: tuple[type[CloudEvent], ...] = (MeterCreated, UsageTotalsChanged)
