"""The shared bounds (schemas/bounds.py, docs/adr/0043-bounded-values.md): each edge value
exactly at its limit accepted, one past it refused; published schemas unchanged."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas import bounds
from schemas.alerts import RuleSpec
from schemas.bounds import (
    EventTime,
    Line,
    MinorUnits,
    PositiveMinorUnits,
    PublishedJsonSchema,
    Text,
)
from schemas.invoicing import CustomerSpec
from schemas.metering import MeterSpec
from schemas.pos import PosMappingSpec, PosReceipt
from schemas.pricing import PlanSpec
from schemas.usage import UsageEvent, UsageEventIn
from schemas.webhooks import EndpointPatch

D = Decimal


class Model(BaseModel):
    line: Line = "x"
    text: Text = "x"
    minor: MinorUnits = 0
    positive: PositiveMinorUnits = 1
    time: EventTime = datetime(2026, 1, 1, tzinfo=UTC)


def refused(**fields: Any) -> str:
    with pytest.raises(ValidationError) as excinfo:
        Model(**fields)
    [error] = excinfo.value.errors()
    return f"{error['loc'][0]}: {error['msg']}"


# --- text -----------------------------------------------------------------------------------


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x1f", "\x7f", "\t", "\n", "\ud800"])
def test_a_line_refuses_control_characters_and_lone_surrogates(char: str) -> None:
    assert refused(line=f"a{char}b").startswith("line: ")


@pytest.mark.parametrize("char", ["\x00", "\x08", "\x0b", "\x1f", "\udfff"])
def test_text_refuses_control_characters_but_tab_and_newline(char: str) -> None:
    assert "position 1" in refused(text=f"a{char}b")


def test_text_keeps_tab_newline_and_any_printable_character() -> None:
    m = Model(text="a\tb\r\nc", line="Zoë 🍵 \u00a0\u200b")
    assert m.text == "a\tb\r\nc"


# --- money in minor units ---------------------------------------------------------------------


def test_minor_units_at_the_limit_are_accepted_one_past_refused() -> None:
    limit = bounds.MAX_MINOR_UNITS
    assert limit == 10**15
    assert Model(minor=limit, positive=limit).minor == limit
    assert Model(minor=-limit).minor == -limit
    assert refused(minor=limit + 1).startswith("minor: ")
    assert refused(minor=-limit - 1).startswith("minor: ")
    assert refused(positive=limit + 1).startswith("positive: ")
    assert refused(positive=0).startswith("positive: ")
    assert refused(minor=10**40).startswith("minor: ")  # the 40-digit payment of finding 6


# --- times ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "time",
    [
        "1970-01-01T00:00:00Z",
        "1970-01-01T01:00:00+01:00",
        "2099-12-31T23:59:59.999999Z",
        "2100-01-01T00:59:59+01:00",
    ],
)
def test_times_inside_the_window_are_accepted(time: str) -> None:
    assert Model.model_validate({"time": time}).time == datetime.fromisoformat(time)


@pytest.mark.parametrize(
    "time",
    [
        "1969-12-31T23:59:59.999999Z",
        "1970-01-01T00:30:00+01:00",
        "2100-01-01T00:00:00Z",
        "2099-12-31T23:30:00-01:00",
        "9999-12-31T23:30:00-01:00",  # UTC form in year 10000: no OverflowError, a 422
        "0001-01-01T00:30:00+01:00",  # UTC form in year 0
    ],
)
def test_times_outside_the_window_are_refused_without_overflowing(time: str) -> None:
    assert "2100-01-01T00:00:00Z" in refused(time=time)


# --- metered values -------------------------------------------------------------------------

EDGES_OK: list[Any] = [
    10**15,
    -(10**15),
    D("1E+15"),
    D("999999999999999.999999999999"),
    D("0.000000000001"),
    D("1.500000000000000000"),  # trailing zeros are not decimal places
    "1000000000000000",
    " -0.000000000001 ",
    "1e15",
    "00000000000000000000000000001",
    "12345678901234567890-abc",  # not a number: text
    "NaN",  # not a number to meters: text
]
EDGES_REFUSED: list[Any] = [
    10**15 + 1,
    -(10**15) - 1,
    D("1000000000000000.000000000001"),
    D("1E+30"),
    D("1E+400"),
    D("0.0000000000001"),
    D("NaN"),
    D("Infinity"),
    "1e30",
    "1000000000000001",
    "0.0000000000001",
    "1e-13",
    1e30,
]


@pytest.mark.parametrize("value", EDGES_OK)
def test_metered_values_at_the_limit_are_accepted(value: Any) -> None:
    assert bounds.usage_data_problem({"v": value, "nested": [{"v": value}]}) is None


@pytest.mark.parametrize("value", EDGES_REFUSED)
def test_metered_values_past_the_limit_are_refused_naming_the_path(value: Any) -> None:
    problem = bounds.usage_data_problem({"ok": 1, "usage": {"input tokens": [1, value]}})
    assert problem is not None and problem.startswith("data.usage['input tokens'][1] "), problem


def test_usage_data_keys_and_text_values_are_checked() -> None:
    assert "control character" in (bounds.usage_data_problem({"a\x00": 1}) or "")
    assert "control character" in (bounds.usage_data_problem({"m": ["x\x00"]}) or "")
    assert bounds.usage_data_problem({"m": "line one\nline two\t"}) is None


def test_deeply_nested_data_is_walked_without_recursion() -> None:
    data: Any = D("1E+400")
    for _ in range(50_000):
        data = [data]
    assert (bounds.usage_data_problem({"v": data}) or "").endswith("in magnitude")


def event_in(**over: Any) -> dict[str, Any]:
    return {
        "id": "e1",
        "source": "s",
        "type": "llm.completion",
        "subject": "c",
        "time": "2026-11-22T10:15:00Z",
        "data": {"tokens": 1},
        **over,
    }


def test_usage_events_in_and_on_the_topic_hold_the_same_rules() -> None:
    bad = event_in(data={"tokens": D("1E+400")})
    for model in (UsageEventIn,):
        with pytest.raises(ValidationError, match=r"data\.tokens"):
            model.model_validate(bad)
    raw = b'{"specversion":"1.0","id":"e1","source":"s","type":"t","subject":"c",'
    raw += b'"time":"2026-11-22T10:15:00Z","tenantid":"acme","data":{"tokens":1e400}}'
    with pytest.raises(ValidationError, match="at most 10\\*\\*15"):
        UsageEvent.from_json(raw)
    with pytest.raises(ValidationError, match="subject"):
        UsageEvent.from_json(raw.replace(b'"subject":"c"', b'"subject":"c\\u0000"'))
    with pytest.raises(ValidationError, match="time"):
        UsageEvent.from_json(raw.replace(b"2026-11-22T10:15:00Z", b"9999-12-31T23:30:00-01:00"))


bounded_decimals = st.decimals(
    min_value=-(10**15), max_value=10**15, places=12, allow_nan=False, allow_infinity=False
)


@given(bounded_decimals)
def test_every_value_within_bounds_passes_and_round_trips_exactly(value: Decimal) -> None:
    event = UsageEventIn.model_validate(event_in(data={"v": value}))
    [wire] = UsageEvent.encode_from_client([event], "acme")
    assert UsageEvent.from_json(wire).data["v"] == value


@given(st.integers())
def test_an_integer_passes_exactly_when_its_magnitude_is_at_most_10_to_the_15(n: int) -> None:
    assert (bounds.usage_data_problem({"v": n}) is None) == (abs(n) <= 10**15)


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_a_decimal_passes_exactly_when_in_range_with_12_places_at_most(value: Decimal) -> None:
    ok = abs(value) <= 10**15 and value == round(value, 12)
    assert (bounds.usage_data_problem({"v": value}) is None) == ok


# --- plans and POS receipts -------------------------------------------------------------------


def plan(currency: str, *prices: dict[str, Any]) -> dict[str, Any]:
    return {"key": "p", "name": "P", "currency": currency, "interval": "month", "prices": prices}


def flat(key: str, amount: str) -> dict[str, Any]:
    return {"kind": "flat", "key": key, "name": key, "amount": amount}


@pytest.mark.parametrize(
    ("currency", "largest"),
    [("JPY", "999999999999999"), ("USD", "10000000000000"), ("BHD", "1000000000000")],
)
def test_plan_money_at_most_10_to_the_15_minor_units(currency: str, largest: str) -> None:
    PlanSpec.model_validate(plan(currency, flat("f", largest)))
    over = str(D(largest) + D("0.001") if currency != "JPY" else D(largest) + 1)
    with pytest.raises(ValidationError, match=r"prices(\[0\]|\.0\.flat)\.amount"):
        PlanSpec.model_validate(plan(currency, flat("f", over)))


def test_a_plans_fixed_charges_are_bounded_so_an_invoice_fits_bigint() -> None:
    at_most = [flat(f"f{i}", "10000000000000") for i in range(100)]  # 100 * 10**15 cents
    PlanSpec.model_validate(plan("USD", *at_most))  # 10**17: accepted
    fee = "10000000000000"  # each at most 10**15 cents; 99 flats + 2 tier fees: 101 * 10**15
    tiers = [
        {"up_to": "1", "unit_price": "0", "flat_fee": fee},
        {"unit_price": "0", "flat_fee": fee},
    ]
    graduated = {"kind": "graduated", "key": "g", "name": "g", "meter": "m", "tiers": tiers}
    with pytest.raises(ValidationError, match="fixed charges"):
        PlanSpec.model_validate(plan("USD", *at_most[:99], graduated))


def receipt(**over: Any) -> dict[str, Any]:
    line = {"sku": "A", "quantity": "1", "unit_price": "1", "tax": 0, "total": 10**15}
    return {
        "receipt_id": "R1",
        "location": "store-1",
        "time": "2026-11-22T10:15:00Z",
        "currency": "EUR",
        "payment_method": "card",
        "lines": [line],
        "tax": 0,
        "total": 10**15,
        **over,
    }


def test_pos_amounts_are_bounded() -> None:
    PosReceipt.model_validate(receipt())
    line = {"sku": "A", "quantity": "1", "unit_price": "1", "tax": 0, "total": 10**15 + 1}
    with pytest.raises(ValidationError, match="total"):
        PosReceipt.model_validate(receipt(lines=[line], total=10**15 + 1))
    negative_tax = {"sku": "A", "quantity": "1", "unit_price": "1", "tax": -5, "total": 10**15}
    with pytest.raises(ValidationError, match="net amount"):
        PosReceipt.model_validate(receipt(lines=[negative_tax], tax=-5))
    with pytest.raises(ValidationError, match="time"):
        PosReceipt.model_validate(receipt(time="9999-12-31T23:30:00-01:00"))


# --- JSON Schema ----------------------------------------------------------------------------


def test_bounds_show_in_openapi_but_not_in_published_schemas() -> None:
    shown = Model.model_json_schema()["properties"]
    assert shown["minor"]["maximum"] == 10**15 and shown["minor"]["minimum"] == -(10**15)
    assert shown["positive"]["exclusiveMinimum"] == 0 and shown["positive"]["maximum"] == 10**15
    assert shown["line"]["pattern"] == bounds.LINE_PATTERN
    assert shown["time"]["pattern"] == bounds.TIME_PATTERN
    published = Model.model_json_schema(schema_generator=PublishedJsonSchema)["properties"]
    assert "maximum" not in published["minor"] and "pattern" not in published["line"]
    assert published["positive"] == {k: v for k, v in shown["positive"].items() if k != "maximum"}
    usage = UsageEventIn.model_json_schema()["properties"]
    assert usage["subject"]["pattern"] == bounds.LINE_PATTERN
    assert usage["time"]["pattern"] == bounds.TIME_PATTERN


def test_the_advertised_patterns_agree_with_the_validators() -> None:
    for value in ["plain", "tab\there", "nul\x00", "esc\x1b", "del\x7f", "nl\n", "cr\r"]:
        for pattern, line in ((bounds.LINE_PATTERN, True), (bounds.TEXT_PATTERN, False)):
            matches = re.fullmatch(pattern, value) is not None
            assert matches == (bounds.text_problem(value, line=line) is None), (value, line)
    assert not re.match(bounds.TIME_PATTERN, "1969-12-31T23:00:00Z")
    assert re.match(bounds.TIME_PATTERN, "2099-12-31T23:59:59Z")
    assert not re.match(bounds.TIME_PATTERN, "2100-01-01T00:00:00Z")


# --- the rules between fields, said in OpenAPI (issue 12: requests valid by the spec are
# accepted): a body is valid by the OpenAPI schema exactly when the model accepts it ---------

_METER = {"key": "m", "event_type": "t"}
_RULES: list[tuple[type[BaseModel], dict[str, Any], bool]] = [
    (CustomerSpec, {"external_id": "c", "name": "C", "currency": "EUR"}, True),
    (CustomerSpec, {"external_id": "c", "name": "C", "currency": "AAA"}, False),
    (CustomerSpec, {"external_id": "c", "name": "C", "currency": "EUR", "tax_rate": "1"}, True),
    (CustomerSpec, {"external_id": "c", "name": "C", "currency": "EUR", "tax_rate": "1.5"}, False),
    (CustomerSpec, {"external_id": "c", "name": "C", "currency": "EUR", "tax_rate": 2}, False),
    (
        CustomerSpec,
        {"external_id": "c", "name": "C", "currency": "EUR", "tax_exempt": True, "tax_rate": "0.2"},
        False,
    ),
    (
        CustomerSpec,
        {"external_id": "c", "name": "C", "currency": "EUR", "tax_exempt": True, "tax_rate": "0"},
        True,
    ),
    (MeterSpec, {**_METER, "aggregation": "count"}, True),
    (MeterSpec, {**_METER, "aggregation": "count", "value_property": "$.v"}, False),
    (MeterSpec, {**_METER, "aggregation": "sum"}, False),
    (MeterSpec, {**_METER, "aggregation": "sum", "value_property": None}, False),
    (MeterSpec, {**_METER, "aggregation": "sum", "value_property": "$.v['a b'][0]"}, True),
    (MeterSpec, {**_METER, "aggregation": "sum", "value_property": "v"}, False),
    (MeterSpec, {**_METER, "aggregation": "count", "group_by": {"region": "$.r"}}, True),
    (MeterSpec, {**_METER, "aggregation": "count", "group_by": {"a b": "$.r"}}, False),
    (EndpointPatch, {}, False),
    (EndpointPatch, {"url": None}, False),
    (EndpointPatch, {"enabled": False}, True),
    (PosMappingSpec, {}, False),
    (PosMappingSpec, {"subjects_by_location": {}}, False),
    (PosMappingSpec, {"subjects_by_location": {"": "c"}}, False),
    (PosMappingSpec, {"subjects_by_location": {"l1": "c"}}, True),
    (PosMappingSpec, {"default_subject": "c"}, True),
    (
        PosMappingSpec,
        {"default_subject": "c", "emit_gross_sales": False, "emit_transactions": False},
        False,
    ),
    (RuleSpec, {"key": "r", "rule": {"meter": "m", "thresholds": ["10"]}}, False),  # no kind
    (RuleSpec, {"key": "r", "rule": {"kind": "usage_threshold", "meter": "m"}}, False),
    (
        RuleSpec,
        {"key": "r", "rule": {"kind": "usage_threshold", "meter": "m", "thresholds": ["0"]}},
        False,
    ),
    (
        RuleSpec,
        {"key": "r", "rule": {"kind": "usage_threshold", "meter": "m", "thresholds": [1, 1]}},
        False,
    ),
    (
        RuleSpec,
        {"key": "r", "rule": {"kind": "usage_threshold", "meter": "m", "thresholds": ["1.5"]}},
        True,
    ),
    (
        RuleSpec,
        {"key": "r", "rule": {"kind": "spend_threshold", "currency": "XXX", "recurring_every": 5}},
        False,
    ),
    (
        RuleSpec,
        {"key": "r", "rule": {"kind": "spend_threshold", "currency": "USD", "recurring_every": 5}},
        True,
    ),
    (RuleSpec, {"key": "r", "rule": {"kind": "anomaly", "meter": "m", "factor": "0.5"}}, False),
    (RuleSpec, {"key": "r", "rule": {"kind": "anomaly", "meter": "m", "factor": "1.5"}}, True),
    (
        UsageEventIn,
        {
            "id": "1",
            "source": "s",
            "type": "t",
            "subject": "c",
            "time": "2026-01-01T00:00:00Z",
            "data": {"\n": 1},
        },
        False,
    ),
    (
        UsageEventIn,
        {
            "id": "1",
            "source": "s",
            "type": "t",
            "subject": "c",
            "time": "2026-01-01T00:00:00Z",
            "data": {"k": 1},
        },
        True,
    ),
]


def _plan(price: dict[str, Any]) -> dict[str, Any]:
    return {"key": "p", "name": "P", "currency": "USD", "interval": "month", "prices": [price]}


_RULES += [
    (PlanSpec, _plan({"kind": "flat", "key": "f", "name": "F", "amount": "5"}), True),
    (PlanSpec, _plan({"key": "f", "name": "F", "amount": "5"}), False),  # no kind
    (
        PlanSpec,
        {**_plan({"kind": "flat", "key": "f", "name": "F", "amount": "5"}), "currency": "ABC"},
        False,
    ),
]


@pytest.mark.parametrize(("model", "body", "valid"), _RULES)
def test_openapi_schemas_say_what_the_models_refuse(
    model: type[BaseModel], body: dict[str, Any], valid: bool
) -> None:
    schema = jsonschema_rs.validator_for(model.model_json_schema())
    try:
        parsed = model.model_validate_json(json.dumps(body))
        # the PATCH route refuses a patch that changes nothing
        accepted = model is not EndpointPatch or bool(parsed.model_dump(exclude_none=True))
    except ValidationError:
        accepted = False
    assert (accepted, schema.is_valid(body)) == (valid, valid)


def test_a_package_size_of_5_0_is_an_integer_as_json_schema_says() -> None:
    price = {"kind": "package", "key": "p", "name": "P", "meter": "m", "package_size": 5.0}
    plan = PlanSpec.model_validate_json(json.dumps(_plan({**price, "package_price": 1})))
    assert plan.prices[0].package_size == 5  # type: ignore[union-attr]
    for bad in (True, "5", 5.5):
        with pytest.raises(ValidationError):
            PlanSpec.model_validate(_plan({**price, "package_size": bad, "package_price": 1}))


def test_the_rules_between_fields_stay_out_of_the_published_schemas() -> None:
    for model in (CustomerSpec, MeterSpec, EndpointPatch, PosMappingSpec, RuleSpec, PlanSpec):
        published = json.dumps(model.model_json_schema(schema_generator=PublishedJsonSchema))
        for keyword in (
            '"if"',
            '"anyOf": [{"properties"',
            '"enum": ["AED"',
            '"not"',
            "minProperties",
        ):
            assert keyword not in published, (model.__name__, keyword)
