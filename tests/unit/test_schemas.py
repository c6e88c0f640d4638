"""The typed contracts: meter definitions, usage events, the envelope, exported schemas."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from pydantic import ValidationError

from schemas import topics
from schemas.catalog import CATALOG, export, schema_file_name
from schemas.envelope import CloudEvent, new_id
from schemas.metering import MAX_GROUP_BY, Aggregation, CreateMeter, MeterCreated, MeterSpec
from schemas.usage import UsageEvent, UsageEventIn, UsageRecord
from storage.metering import MeterDef
from workers.metering import service

# --- MeterSpec ------------------------------------------------------------------------


def spec(**overrides: Any) -> MeterSpec:
    fields: dict[str, Any] = {
        "key": "tokens",
        "event_type": "llm.completion",
        "aggregation": "sum",
        "value_property": "$.tokens",
    }
    fields.update(overrides)
    return MeterSpec(**fields)


def errors_of(excinfo: pytest.ExceptionInfo[ValidationError]) -> str:
    return "; ".join(f"{e['loc']}: {e['msg']}" for e in excinfo.value.errors())


@pytest.mark.parametrize("aggregation", ["sum", "min", "max", "unique_count", "latest"])
def test_value_property_is_required_for_every_aggregation_but_count(aggregation: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        spec(aggregation=aggregation, value_property=None)
    assert f"('value_property',): Value error, required for aggregation '{aggregation}'" in (
        errors_of(excinfo)
    )
    assert spec(aggregation=aggregation).value_property == "$.tokens"


def test_count_takes_no_value_property() -> None:
    assert spec(aggregation="count", value_property=None).aggregation is Aggregation.COUNT
    with pytest.raises(ValidationError) as excinfo:
        spec(aggregation="count", value_property="$.tokens")
    assert "('value_property',): Value error, must be omitted for aggregation 'count'" in (
        errors_of(excinfo)
    )


def test_unknown_aggregation_is_refused() -> None:
    with pytest.raises(ValidationError) as excinfo:
        spec(aggregation="avg")
    assert "aggregation" in errors_of(excinfo)


@pytest.mark.parametrize("key", ["Tokens", "-tokens", "tok ens", "tokens!", "", "a" * 65, "_x"])
def test_bad_meter_keys_are_refused(key: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        spec(key=key)
    assert excinfo.value.errors()[0]["loc"] == ("key",)


@pytest.mark.parametrize("key", ["tokens", "api-calls", "gpu_seconds", "9lives", "a" * 64])
def test_good_meter_keys_are_accepted(key: str) -> None:
    assert spec(key=key).key == key


def test_bad_value_property_names_the_field_and_the_position() -> None:
    with pytest.raises(ValidationError) as excinfo:
        spec(value_property="$.usage[x]")
    (error,) = excinfo.value.errors()
    assert error["loc"] == ("value_property",)
    assert "position 7" in error["msg"]


def test_value_property_must_start_at_the_root() -> None:
    with pytest.raises(ValidationError) as excinfo:
        spec(value_property="tokens")
    (error,) = excinfo.value.errors()
    assert error["loc"] == ("value_property",)
    assert "starts with '$'" in error["msg"]


def test_bad_group_path_names_the_group_and_the_position() -> None:
    with pytest.raises(ValidationError) as excinfo:
        spec(group_by={"model": "$.model", "region": "$.geo..region"})
    (error,) = excinfo.value.errors()
    assert error["loc"] == ("group_by",)
    assert "group 'region'" in error["msg"]
    assert "position 5" in error["msg"]


@pytest.mark.parametrize("name", ["1st", "has-dash", "has space", ""])
def test_bad_group_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        spec(group_by={name: "$.x"})
    assert f"group name {name!r}" in errors_of(excinfo)


def test_at_most_max_group_by_groups() -> None:
    most = {f"g{i}": f"$.g{i}" for i in range(MAX_GROUP_BY)}
    assert spec(group_by=most).group_by == most
    with pytest.raises(ValidationError) as excinfo:
        spec(group_by={**most, "one_more": "$.x"})
    assert f"at most {MAX_GROUP_BY} groups" in errors_of(excinfo)


def test_meter_spec_forbids_unknown_fields_and_is_frozen() -> None:
    with pytest.raises(ValidationError) as excinfo:
        spec(window="hour")
    assert excinfo.value.errors()[0]["type"] == "extra_forbidden"
    meter = spec()
    with pytest.raises(ValidationError):
        meter.key = "other"  # type: ignore[misc]


# --- usage events ---------------------------------------------------------------------

T0 = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def usage_in(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": "evt-1",
        "source": "api-gateway",
        "type": "llm.completion",
        "subject": "customer-1",
        "time": T0.isoformat(),
        "data": {"tokens": 10},
    }
    fields.update(overrides)
    return fields


def on_topic(**overrides: Any) -> dict[str, Any]:
    return {**usage_in(), "tenantid": "acme", **overrides}


@pytest.mark.parametrize("model", [UsageEventIn, UsageEvent])
def test_naive_times_are_refused(model: type[UsageEventIn | UsageEvent]) -> None:
    fields = on_topic() if model is UsageEvent else usage_in()
    with pytest.raises(ValidationError) as excinfo:
        model.model_validate({**fields, "time": "2024-05-01T12:30:00"})
    assert excinfo.value.errors()[0]["loc"] == ("time",)
    assert "timezone" in excinfo.value.errors()[0]["msg"]


@pytest.mark.parametrize("model", [UsageEventIn, UsageEvent])
def test_time_is_required_not_defaulted_to_now(model: type[UsageEventIn | UsageEvent]) -> None:
    fields = on_topic() if model is UsageEvent else usage_in()
    del fields["time"]
    with pytest.raises(ValidationError) as excinfo:
        model.model_validate(fields)
    assert excinfo.value.errors()[0]["loc"] == ("time",)
    assert excinfo.value.errors()[0]["type"] == "missing"


def test_time_keeps_its_offset_and_instant() -> None:
    event = UsageEventIn.model_validate(usage_in(time="2024-05-01T14:30:00+02:00"))
    assert event.time == T0
    assert event.time.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("model", [UsageEventIn, UsageEvent])
def test_extra_fields_are_forbidden(model: type[UsageEventIn | UsageEvent]) -> None:
    fields = on_topic() if model is UsageEvent else usage_in()
    with pytest.raises(ValidationError) as excinfo:
        model.model_validate({**fields, "customer": "c-1"})
    (error,) = excinfo.value.errors()
    assert error["type"] == "extra_forbidden"
    assert error["loc"] == ("customer",)


def test_client_events_cannot_choose_their_tenant() -> None:
    with pytest.raises(ValidationError) as excinfo:
        UsageEventIn.model_validate(usage_in(tenantid="someone-else"))
    assert excinfo.value.errors()[0]["loc"] == ("tenantid",)


@pytest.mark.parametrize("field", ["id", "source", "type", "subject"])
def test_identifying_fields_are_required(field: str) -> None:
    fields = on_topic()
    del fields[field]
    with pytest.raises(ValidationError) as excinfo:
        UsageEvent.model_validate(fields)
    assert excinfo.value.errors()[0]["loc"] == (field,)


def test_a_usage_record_without_id_is_refused_not_given_a_fresh_one() -> None:
    # (tenantid, source, id) is what makes a redelivered record count once; an id invented
    # while decoding would differ on every delivery.
    record = on_topic()
    del record["id"]
    with pytest.raises(ValidationError):
        service.decode_usage(json.dumps(record).encode())


@pytest.mark.parametrize("tenant", ["Acme", "-acme", "acme_corp", "acme corp", "", "a" * 64])
def test_bad_tenant_ids_are_refused(tenant: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        UsageEvent.model_validate(on_topic(tenantid=tenant))
    assert excinfo.value.errors()[0]["loc"] == ("tenantid",)


@pytest.mark.parametrize("tenant", ["acme", "acme-corp", "0day", "a" * 63])
def test_good_tenant_ids_are_accepted(tenant: str) -> None:
    assert UsageEvent.model_validate(on_topic(tenantid=tenant)).tenantid == tenant


@pytest.mark.parametrize("event_type", ["", " llm", "llm completion", ".llm", "llm?"])
def test_bad_event_types_are_refused(event_type: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        UsageEventIn.model_validate(usage_in(type=event_type))
    assert excinfo.value.errors()[0]["loc"] == ("type",)


def test_from_client_keeps_every_field_and_adds_the_tenant() -> None:
    client = UsageEventIn.model_validate(usage_in(time="2024-05-01T14:30:00+02:00"))
    event = UsageEvent.from_client(client, "acme")
    assert event.tenantid == "acme"
    assert (event.id, event.source, event.type, event.subject) == (
        "evt-1",
        "api-gateway",
        "llm.completion",
        "customer-1",
    )
    assert event.time == client.time
    assert event.data == {"tokens": 10}
    assert event.specversion == "1.0"


def test_usage_event_survives_the_topic_round_trip() -> None:
    event = UsageEvent.model_validate(on_topic(data={"tokens": 10, "model": {"name": "x"}}))
    # what the metering worker holds of it: every attribute it reads, as the model has it
    assert service.decode_usage(event.to_json()) == UsageRecord.of(event)
    assert UsageEvent.from_json(event.to_json()) == event


# --- the envelope ---------------------------------------------------------------------


def test_generated_ids_are_uuid7_carrying_the_creation_time() -> None:
    before = datetime.now(UTC)
    ids = [new_id() for _ in range(50)]
    after = datetime.now(UTC)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert len(set(ids)) == len(ids)
    for u in parsed:
        millis = u.int >> 80  # the first 48 bits are the Unix time in milliseconds
        stamp = datetime.fromtimestamp(millis / 1000, UTC)
        # uuid6 bumps the stamp by 1 ms per id within one millisecond, to stay monotonic
        assert before - timedelta(milliseconds=1) <= stamp <= after + timedelta(seconds=10)
    # time-ordered: ids generated later sort later
    assert ids == sorted(ids)


def test_envelope_defaults_are_cloudevents() -> None:
    event = CloudEvent(source="test", type="thing.happened", data={}, tenantid="acme")
    assert uuid.UUID(event.id).version == 7
    assert event.specversion == "1.0"
    assert event.datacontenttype == "application/json"
    assert event.time.tzinfo is not None
    wire = json.loads(event.to_json())
    assert "subject" not in wire and "correlationid" not in wire  # None attributes are omitted


def meter_command(**envelope: Any) -> CreateMeter:
    return CreateMeter(source="cli", data=spec(), tenantid="acme", **envelope)


def test_caused_starts_a_correlation_at_the_first_message() -> None:
    command = meter_command()
    attrs = command.caused()
    assert attrs == {"tenantid": "acme", "correlationid": command.id, "causationid": command.id}


def test_caused_propagates_an_existing_correlation() -> None:
    command = meter_command(correlationid="req-42", causationid="earlier")
    attrs = command.caused(subject="tokens")
    assert attrs == {
        "tenantid": "acme",
        "correlationid": "req-42",
        "causationid": command.id,
        "subject": "tokens",
    }


def test_meter_created_is_caused_by_its_command() -> None:
    command = meter_command(correlationid="req-42")
    meter = service.new_meter(command)
    created = service.meter_created(command, meter)
    assert created.correlationid == "req-42"
    assert created.causationid == command.id
    assert created.tenantid == "acme"
    assert created.id != command.id
    assert created.data.meter_id == meter.id
    assert created.subject == "tokens"


# --- exported JSON Schemas ------------------------------------------------------------


def _schemas(tmp_path: Path) -> dict[str, dict[str, Any]]:
    written = export(tmp_path)
    assert sorted(written) == sorted(tmp_path / schema_file_name(s) for s in CATALOG)
    schemas: dict[str, dict[str, Any]] = {}
    for path in written:
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        schemas[schema["x-billstream"]["type"]] = schema
    return schemas


def test_export_writes_one_valid_schema_per_message(tmp_path: Path) -> None:
    schemas = _schemas(tmp_path)
    assert set(schemas) == {spec.ce_type for spec in CATALOG}
    assert len(schemas) == len(CATALOG)  # one file per message, none overwritten
    assert {"*", "CreateMeter", "meter.created", "invoice.finalized", "payment.succeeded"} <= set(
        schemas
    )
    assert schemas["*"]["x-billstream"] == {
        "topic": topics.USAGE,
        "kind": "usage",
        "type": "*",
        "dataversion": "1",
    }
    assert schemas["CreateMeter"]["x-billstream"]["topic"] == topics.COMMANDS_METERING
    assert schemas["meter.created"]["x-billstream"]["topic"] == topics.EVENTS_METERING
    assert (tmp_path / "billstream.usage.v1" / "usage-event.v1.schema.json").is_file()


def test_real_messages_validate_against_their_exported_schemas(tmp_path: Path) -> None:
    schemas = _schemas(tmp_path)
    command = meter_command()
    created = service.meter_created(command, service.new_meter(command))
    usage = UsageEvent.model_validate(on_topic(data={"tokens": 10, "model": "m"}))
    for schema, message in [
        (schemas["*"], usage),
        (schemas["CreateMeter"], command),
        (schemas["meter.created"], created),
    ]:
        validator = Draft202012Validator(schema)
        wire = json.loads(message.to_json())
        assert list(validator.iter_errors(wire)) == []


@pytest.mark.parametrize(
    "change",
    [
        {"tenantid": "Not A Tenant"},
        {"surprise": 1},
        {"time": None},
        {"type": "has spaces"},
    ],
)
def test_exported_usage_schema_rejects_what_the_model_rejects(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    validator = Draft202012Validator(_schemas(tmp_path)["*"])
    wire = json.loads(UsageEvent.model_validate(on_topic()).to_json())
    wire.update(change)
    wire = {k: v for k, v in wire.items() if v is not None}
    assert list(validator.iter_errors(wire)) != []
    with pytest.raises(ValidationError):
        UsageEvent.model_validate(wire)


def test_exported_command_schema_rejects_a_count_meter_with_unknown_aggregation(
    tmp_path: Path,
) -> None:
    validator = Draft202012Validator(_schemas(tmp_path)["CreateMeter"])
    wire = json.loads(meter_command().to_json())
    wire["data"]["aggregation"] = "avg"
    assert list(validator.iter_errors(wire)) != []
    wire["data"]["aggregation"] = "max"
    wire["type"] = "DeleteMeter"
    assert list(validator.iter_errors(wire)) != []


def test_meter_def_from_command_carries_the_definition() -> None:
    command = CreateMeter(
        source="cli",
        tenantid="acme",
        data=spec(group_by={"model": "$.model"}, name="Tokens", description="LLM tokens"),
    )
    meter = service.new_meter(command)
    assert meter == MeterDef(
        id=meter.id,
        tenant_id="acme",
        key="tokens",
        event_type="llm.completion",
        aggregation="sum",
        value_property="$.tokens",
        group_by={"model": "$.model"},
        name="Tokens",
        description="LLM tokens",
    )
    assert uuid.UUID(meter.id).version == 7
    assert isinstance(
        MeterCreated.model_validate_json(service.meter_created(command, meter).to_json()),
        MeterCreated,
    )


def test_offsets_other_than_utc_are_accepted() -> None:
    tz = timezone(timedelta(hours=-7, minutes=-30))
    event = UsageEventIn.model_validate(usage_in(time=T0.astimezone(tz).isoformat()))
    assert event.time == T0


def test_a_command_read_off_a_topic_must_carry_its_own_id_and_time() -> None:
    from pydantic import TypeAdapter

    from schemas.envelope import WIRE
    from schemas.metering import CreateMeter

    adapter = TypeAdapter(CreateMeter)
    body = {
        "source": "s",
        "type": "CreateMeter",
        "tenantid": "acme",
        "data": {"key": "k", "event_type": "x", "aggregation": "count"},
    }
    with pytest.raises(ValidationError, match="needs id and time"):
        adapter.validate_json(json.dumps(body), context=WIRE)
    # constructing one in code still gets a fresh UUIDv7 and the current time
    assert adapter.validate_python(body).id
    full = {**body, "id": "c-1", "time": "2026-11-22T10:00:00Z"}
    assert adapter.validate_json(json.dumps(full), context=WIRE).id == "c-1"
