"""Price definitions (schemas/pricing.py) and the pure pricing core (workers/invoicing)."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from schemas import jsonexact
from schemas.pricing import (
    FlatPrice,
    GraduatedPrice,
    PackagePrice,
    PerUnitPrice,
    PlanSpec,
    Price,
    Tier,
    VolumePrice,
)
from workers.invoicing.pricing import (
    Priced,
    TierPart,
    from_minor,
    invoice_totals,
    price_usage,
    tax_minor,
    to_minor,
)

D = Decimal
PRICE: TypeAdapter[Price] = TypeAdapter(Price)


def errors_of(excinfo: pytest.ExceptionInfo[ValidationError]) -> str:
    return "; ".join(f"{e['loc']}: {e['msg']}" for e in excinfo.value.errors())


def tiers(*rows: tuple[str | None, str] | tuple[str | None, str, str]) -> list[Tier]:
    out = []
    for row in rows:
        up_to, unit_price, *flat = row
        out.append(
            Tier(
                up_to=None if up_to is None else D(up_to),
                unit_price=D(unit_price),
                flat_fee=D(flat[0]) if flat else D(0),
            )
        )
    return out


TOKEN_TIERS = tiers(("1000", "0.01", "5"), ("10000", "0.005"), (None, "0.001", "2"))


def plan(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "key": "pro",
        "name": "Pro",
        "currency": "USD",
        "interval": "month",
        "prices": [
            {"kind": "flat", "key": "base", "name": "Pro plan", "amount": "49"},
            {
                "kind": "per_unit",
                "key": "tokens",
                "name": "Tokens",
                "meter": "tokens",
                "unit_price": "0.000125",
            },
        ],
    }
    fields.update(overrides)
    return fields


# --- each kind ------------------------------------------------------------------------


def test_flat() -> None:
    price = FlatPrice(key="base", name="Pro plan", amount=D("49"))
    assert price_usage(price, D(0)) == Priced(D(1), D(1), D(49), (), False)


def test_flat_prorated() -> None:
    price = FlatPrice(key="base", name="Pro plan", amount=D("49"))
    assert price_usage(price, D(0), proration=D("0.25")).amount == D("12.25")
    priced = price_usage(price, D(0), proration=D(10) / D(30))
    assert to_minor(priced.amount, "USD") == 1633  # 16.3333... USD
    assert price_usage(price, D(0), proration=D(0)).amount == 0


def test_per_unit() -> None:
    price = PerUnitPrice(key="tokens", name="Tokens", meter="tokens", unit_price=D("0.000125"))
    priced = price_usage(price, D(1_234_567))
    assert priced == Priced(D(1_234_567), D(1_234_567), D("154.320875"), (), False)
    assert to_minor(priced.amount, "USD") == 15432


def test_per_unit_ignores_proration() -> None:
    price = PerUnitPrice(key="calls", name="Calls", meter="calls", unit_price=D("0.5"))
    assert price_usage(price, D(10), proration=D("0.25")).amount == D(5)


def test_graduated_breakdown() -> None:
    price = GraduatedPrice(key="tokens", name="Tokens", meter="tokens", tiers=TOKEN_TIERS)
    priced = price_usage(price, D(12_500))
    assert priced.parts == (
        TierPart(0, D(1000), D("0.01"), D(5), D(15)),
        TierPart(1, D(9000), D("0.005"), D(0), D(45)),
        TierPart(2, D(2500), D("0.001"), D(2), D("4.5")),
    )
    assert priced.amount == D("64.5")
    assert not priced.minimum_applied


def test_graduated_bounds_are_inclusive() -> None:
    price = GraduatedPrice(key="tokens", name="Tokens", meter="tokens", tiers=TOKEN_TIERS)
    at_bound = price_usage(price, D(1000))
    assert at_bound.parts == (TierPart(0, D(1000), D("0.01"), D(5), D(15)),)
    just_over = price_usage(price, D("1000.5"))
    assert [p.tier for p in just_over.parts] == [0, 1]
    assert just_over.parts[1].quantity == D("0.5")
    assert just_over.amount == D(15) + D("0.0025")


def test_volume_breakdown() -> None:
    price = VolumePrice(key="tokens", name="Tokens", meter="tokens", tiers=TOKEN_TIERS)
    assert price_usage(price, D(12_500)).parts == (
        TierPart(2, D(12_500), D("0.001"), D(2), D("14.5")),
    )
    assert price_usage(price, D(10_000)).parts == (TierPart(1, D(10_000), D("0.005"), D(0), D(50)),)
    assert price_usage(price, D(1)).amount == D("5.01")


def test_zero_usage_costs_nothing_not_even_a_tier_fee() -> None:
    for cls in (GraduatedPrice, VolumePrice):
        priced = price_usage(cls(key="t", name="T", meter="t", tiers=TOKEN_TIERS), D(0))
        assert priced == Priced(D(0), D(0), D(0), (), False)


def test_package_rounds_up() -> None:
    price = PackagePrice(
        key="emails", name="Emails", meter="emails", package_size=1000, package_price=D("1.50")
    )
    assert price_usage(price, D(0)).amount == 0
    assert price_usage(price, D(1)).amount == D("1.50")
    assert price_usage(price, D(1000)).amount == D("1.50")
    assert price_usage(price, D(1001)).amount == D("3.00")
    assert price_usage(price, D("2000.000001")).amount == D("4.50")
    assert price_usage(price, D(1001)).parts == ()


def test_included_quantity_comes_off_first() -> None:
    price = GraduatedPrice(
        key="tokens", name="Tokens", meter="tokens", tiers=TOKEN_TIERS, included_quantity=D(500)
    )
    priced = price_usage(price, D(1700))
    assert priced.quantity == D(1700)
    assert priced.billable_quantity == D(1200)
    assert [(p.tier, p.quantity) for p in priced.parts] == [(0, D(1000)), (1, D(200))]
    below = price_usage(price, D(300))
    assert below.billable_quantity == 0 and below.amount == 0

    per_unit = PerUnitPrice(
        key="c", name="C", meter="c", unit_price=D(2), included_quantity=D("0.5")
    )
    assert price_usage(per_unit, D("3.25")).amount == D("5.50")


def test_minimum_spend() -> None:
    price = PerUnitPrice(key="c", name="C", meter="c", unit_price=D("0.10"), minimum_spend=D(20))
    low = price_usage(price, D(50))
    assert (low.amount, low.minimum_applied) == (D(20), True)
    exact = price_usage(price, D(200))
    assert (exact.amount, exact.minimum_applied) == (D(20), False)
    high = price_usage(price, D(201))
    assert (high.amount, high.minimum_applied) == (D("20.10"), False)


def test_minimum_spend_is_prorated_usage_is_not() -> None:
    price = PerUnitPrice(key="c", name="C", meter="c", unit_price=D("0.10"), minimum_spend=D(30))
    third = D(1) / D(3)
    low = price_usage(price, D(50), proration=third)  # usage 5 < minimum 10
    assert low.minimum_applied and low.amount == D(30) * third
    assert to_minor(low.amount, "USD") == 1000
    high = price_usage(price, D(150), proration=third)  # usage 15 > minimum 10
    assert not high.minimum_applied and high.amount == D(15)


def test_minimum_spend_on_tiers_keeps_the_breakdown() -> None:
    price = VolumePrice(key="t", name="T", meter="t", tiers=TOKEN_TIERS, minimum_spend=D(100))
    priced = price_usage(price, D(10))
    assert priced.minimum_applied and priced.amount == D(100)
    assert priced.parts == (TierPart(0, D(10), D("0.01"), D(5), D("5.10")),)


@pytest.mark.parametrize("quantity", [D(-1), D("-0.000001")])
def test_negative_quantity_is_refused(quantity: Decimal) -> None:
    price = PerUnitPrice(key="c", name="C", meter="c", unit_price=D(1))
    with pytest.raises(ValueError, match="quantity must be >= 0"):
        price_usage(price, quantity)


def test_bad_arguments() -> None:
    price = PerUnitPrice(key="c", name="C", meter="c", unit_price=D(1))
    with pytest.raises(TypeError, match="never a float"):
        price_usage(price, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        price_usage(price, D("NaN"))
    with pytest.raises(ValueError, match="proration must be between 0 and 1"):
        price_usage(price, D(1), proration=D("1.01"))
    with pytest.raises(ValueError, match="cannot price quantity"):
        price_usage(price, D("1" + "0" * 100 + "." + "0" * 20 + "1"))  # 122 digits
    assert price_usage(price, 3).amount == D(3)  # type: ignore[arg-type]  # an int is exact


# --- rounding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "half_even", "half_up"),
    [
        ("12.345", "USD", 1234, 1235),
        ("12.355", "USD", 1236, 1236),
        ("12.5", "JPY", 12, 13),
        ("13.5", "JPY", 14, 14),
        ("0.0005", "BHD", 0, 1),
        ("1.2345", "BHD", 1234, 1235),
        ("-12.345", "USD", -1234, -1235),
        ("0.00004", "CLF", 0, 0),
        ("0.00005", "CLF", 0, 1),
        ("49", "USD", 4900, 4900),
        ("49", "JPY", 49, 49),
        ("7.8", "IDR", 780, 780),
    ],
)
def test_to_minor_rounds_once(amount: str, currency: str, half_even: int, half_up: int) -> None:
    assert to_minor(D(amount), currency) == half_even
    assert to_minor(D(amount), currency, ROUND_HALF_EVEN) == half_even
    assert to_minor(D(amount), currency, ROUND_HALF_UP) == half_up


def test_line_rounds_once_not_per_tier() -> None:
    price = GraduatedPrice(
        key="t",
        name="T",
        meter="t",
        tiers=tiers(("1", "0.005"), (None, "0.005")),
    )
    priced = price_usage(price, D(2))  # 0.005 + 0.005: rounding each tier would give 0.02
    assert priced.amount == D("0.010")
    assert to_minor(priced.amount, "USD") == 1


def test_from_minor() -> None:
    assert from_minor(1234, "USD") == D("12.34")
    assert from_minor(1234, "JPY") == D(1234)
    assert from_minor(1234, "BHD") == D("1.234")
    assert from_minor(-5, "CLF") == D("-0.0005")
    assert to_minor(from_minor(987654321, "KWD"), "KWD") == 987654321
    with pytest.raises(TypeError):
        from_minor(D(1), "USD")  # type: ignore[arg-type]


def test_unknown_currency_or_rounding() -> None:
    with pytest.raises(ValueError, match="unknown ISO 4217 currency 'XYZ'"):
        to_minor(D(1), "XYZ")
    with pytest.raises(ValueError, match="unknown ISO 4217 currency 'XYZ'"):
        from_minor(1, "XYZ")
    with pytest.raises(ValueError, match="unknown rounding mode 'HALF'"):
        to_minor(D(1), "USD", "HALF")
    with pytest.raises(TypeError, match="never a float"):
        to_minor(0.1, "USD")  # type: ignore[arg-type]


def test_tax_and_totals() -> None:
    assert tax_minor(1000, D("0.19"), "USD") == 190
    assert tax_minor(1050, D("0.19"), "USD") == 200  # 199.5 -> 200 (half-even)
    assert tax_minor(1250, D("0.19"), "USD") == 238  # 237.5 -> 238
    assert tax_minor(1150, D("0.19"), "USD") == 218  # 218.5 -> 218 (half-even)
    assert tax_minor(1150, D("0.19"), "USD", ROUND_HALF_UP) == 219
    assert invoice_totals([4900, 1633, 15432], D("0.2"), "USD") == (21965, 4393, 26358)
    assert invoice_totals([4900, 1633], None, "USD") == (6533, 0, 6533)
    assert invoice_totals([], D("0.2"), "JPY") == (0, 0, 0)
    with pytest.raises(ValueError, match="tax rate must be >= 0"):
        tax_minor(100, D("-0.1"), "USD")
    with pytest.raises(TypeError, match="line 1"):
        invoice_totals([1, D(2)], None, "USD")  # type: ignore[list-item]


# --- definitions: validation and JSON -------------------------------------------------


def test_plan_round_trips_through_json_exactly() -> None:
    spec = PlanSpec.model_validate(
        plan(
            prices=[
                {"kind": "flat", "key": "base", "name": "Base", "amount": 49},
                {
                    "kind": "graduated",
                    "key": "tokens",
                    "name": "Tokens",
                    "meter": "tokens",
                    "tiers": [
                        {"up_to": "1000", "unit_price": "0.000125", "flat_fee": "5.00"},
                        {"up_to": None, "unit_price": "0.000000000001"},
                    ],
                    "included_quantity": "100",
                    "minimum_spend": "20",
                },
                {
                    "kind": "package",
                    "key": "emails",
                    "name": "Emails",
                    "meter": "emails",
                    "package_size": 1000,
                    "package_price": "1.50",
                },
            ]
        )
    )
    text = spec.model_dump_json()
    data = json.loads(text)
    tokens = data["prices"][1]
    assert data["prices"][0]["amount"] == "49"
    assert tokens["tiers"][0] == {"up_to": "1000", "unit_price": "0.000125", "flat_fee": "5.00"}
    assert tokens["tiers"][1]["unit_price"] == "0.000000000001"
    assert tokens["minimum_spend"] == "20"
    assert PlanSpec.model_validate_json(text) == spec
    assert PlanSpec.model_validate(jsonexact.loads(text)) == spec
    assert isinstance(spec.prices[1], GraduatedPrice)
    assert spec.price("emails") == spec.prices[2]


def test_exact_json_numbers_are_accepted_floats_are_not() -> None:
    # schemas.jsonexact parses 0.1 as Decimal("0.1"): exact, accepted
    raw = '{"kind":"per_unit","key":"c","name":"C","meter":"c","unit_price":0.1}'
    price = PRICE.validate_python(jsonexact.loads(raw))
    assert isinstance(price, PerUnitPrice) and price.unit_price == D("0.1")
    # a plain JSON parse gives a binary float: refused, with the fix in the message
    with pytest.raises(ValidationError) as excinfo:
        PRICE.validate_json(raw)
    assert "not a float" in errors_of(excinfo) and 'e.g. "0.1"' in errors_of(excinfo)
    with pytest.raises(ValidationError, match="not a float"):
        PerUnitPrice(key="c", name="C", meter="c", unit_price=0.5)


def test_decimals_are_written_without_exponent() -> None:
    price = PerUnitPrice(key="c", name="C", meter="c", unit_price=D("1E+3"))
    assert json.loads(price.model_dump_json())["unit_price"] == "1000"
    assert PRICE.validate_json(price.model_dump_json()) == price


def bad_price(**fields: Any) -> str:
    base: dict[str, Any] = {"kind": "per_unit", "key": "c", "name": "C", "meter": "c"}
    base.update(fields)
    with pytest.raises(ValidationError) as excinfo:
        PRICE.validate_json(json.dumps(base))
    return errors_of(excinfo)


def test_bad_amounts() -> None:
    assert "at most 12 decimal places, got 13" in bad_price(unit_price="0.0000000000001")
    assert "must be >= 0" in bad_price(unit_price="-1")
    assert "decimal number like '12.5'" in bad_price(unit_price="1e3")
    assert "decimal number like '12.5'" in bad_price(unit_price=" 1")
    assert "must be below 10**15" in bad_price(unit_price="1000000000000000")
    assert "not a boolean" in bad_price(unit_price="1", minimum_spend=True)
    assert "included_quantity" in bad_price(unit_price="1", included_quantity="-5")
    # trailing zeros are not decimal places
    ok = PRICE.validate_json(
        '{"kind":"per_unit","key":"c","name":"C","meter":"c","unit_price":"1.50000000000000"}'
    )
    assert isinstance(ok, PerUnitPrice) and ok.unit_price == D("1.5")


def tiered(kind: str, rows: list[dict[str, Any]]) -> str:
    return json.dumps({"kind": kind, "key": "t", "name": "T", "meter": "t", "tiers": rows})


@pytest.mark.parametrize("kind", ["graduated", "volume"])
@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [
                {"up_to": "10", "unit_price": "1"},
                {"up_to": "10", "unit_price": "1"},
                {"up_to": None, "unit_price": "1"},
            ],
            "tier 1: up_to 10 must be greater than tier 0's up_to 10",
        ),
        (
            [{"up_to": "10", "unit_price": "1"}, {"up_to": "20", "unit_price": "1"}],
            "tier 1: the last tier must be unbounded (up_to null), got up_to 20",
        ),
        (
            [{"up_to": None, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}],
            "tier 0: only the last tier may be unbounded",
        ),
        (
            [{"up_to": "0", "unit_price": "1"}, {"up_to": None, "unit_price": "1"}],
            "'tiers', 0, 'up_to'): Value error, must be > 0",
        ),
        (
            [{"up_to": None, "unit_price": "0.1234567890123"}],
            "'tiers', 0, 'unit_price'): Value error, at most 12 decimal places",
        ),
        ([], "at least 1 item"),
        ([{"unit_price": "1"}, {"unit_price": "2"}], "tier 0: only the last tier may be unbounded"),
    ],
)
def test_bad_tiers(kind: str, rows: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        PRICE.validate_json(tiered(kind, rows))
    assert message in errors_of(excinfo)


def test_bad_package_size() -> None:
    base = {"kind": "package", "key": "p", "name": "P", "meter": "m", "package_price": "1"}
    for size in (0, -1, "10", 2.5):
        with pytest.raises(ValidationError, match="package_size"):
            PRICE.validate_json(json.dumps({**base, "package_size": size}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"currency": "XYZ"}, "unknown ISO 4217 currency 'XYZ'"),
        ({"currency": "usd"}, "currency 'usd' must be uppercase"),
        ({"currency": "XAU"}, "has no minor unit"),
        ({"interval": "week"}, "'interval',)"),
        ({"prices": []}, "at least 1 item"),
        ({"key": "Pro Plan"}, "'key',)"),
        (
            {
                "prices": [
                    {"kind": "flat", "key": "base", "name": "A", "amount": "1"},
                    {"kind": "flat", "key": "other", "name": "B", "amount": "1"},
                    {"kind": "flat", "key": "base", "name": "C", "amount": "1"},
                ]
            },
            "duplicate price key 'base' (prices 0 and 2)",
        ),
        (
            {"prices": [{"kind": "hourly", "key": "x", "name": "X", "amount": "1"}]},
            "does not match any of the expected tags",
        ),
        (
            {"prices": [{"kind": "flat", "key": "x", "name": "X", "amount": "1", "meter": "m"}]},
            "Extra inputs are not permitted",
        ),
    ],
)
def test_bad_plans(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        PlanSpec.model_validate_json(json.dumps(plan(**overrides)))
    assert message in errors_of(excinfo)


def test_definitions_are_frozen() -> None:
    spec = PlanSpec.model_validate(plan())
    with pytest.raises(ValidationError):
        spec.prices[0].key = "other"


def test_json_schema_says_strings_not_floats() -> None:
    schema = PlanSpec.model_json_schema()
    unit_price = schema["$defs"]["PerUnitPrice"]["properties"]["unit_price"]
    assert {"type": "integer", "minimum": 0} in unit_price["anyOf"]
    assert all(branch["type"] != "number" for branch in unit_price["anyOf"])
    out = PlanSpec.model_json_schema(mode="serialization")
    assert out["$defs"]["PerUnitPrice"]["properties"]["unit_price"]["type"] == "string"
