"""The ISO 4217 table: generated from the committed ISO list, with ISO's minor units."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from schemas import currency, gen_currencies
from schemas.currency import MINOR_UNITS, NO_MINOR_UNIT, CurrencyCode, exponent


def test_generated_module_is_what_the_generator_writes_now() -> None:
    """Nobody hand-edits currency.py: it must be byte for byte the generator's output."""
    generated = gen_currencies.render(gen_currencies.read_list(gen_currencies.SOURCE))
    on_disk = Path(currency.__file__).read_text(encoding="utf-8")
    assert on_disk == generated, "schemas/currency.py is stale: python -m schemas.gen_currencies"
    assert gen_currencies.main(["--check"]) == 0


@pytest.mark.parametrize(
    ("code", "units"),
    [
        ("JPY", 0),
        ("KRW", 0),
        ("USD", 2),
        ("EUR", 2),
        ("IDR", 2),  # ISO says 2 (CLDR says 0): the table is ISO's
        ("BHD", 3),
        ("KWD", 3),
        ("CLF", 4),
        ("UYW", 4),
    ],
)
def test_minor_units_are_iso_4217(code: str, units: int) -> None:
    assert MINOR_UNITS[code] == units
    assert exponent(code) == units


def test_one_entry_per_currency_and_no_unbillable_codes() -> None:
    assert len(MINOR_UNITS) > 150
    assert all(len(c) == 3 and c.isupper() for c in MINOR_UNITS)
    assert list(MINOR_UNITS) == sorted(MINOR_UNITS)
    assert {"XAU", "XDR", "XTS", "XXX"} <= NO_MINOR_UNIT
    assert not NO_MINOR_UNIT & set(MINOR_UNITS)
    assert currency.NAMES["EUR"] == "Euro"


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        MINOR_UNITS["ZZZ"] = 2  # type: ignore[index]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("XYZ", "unknown ISO 4217 currency 'XYZ'"),
        ("XAU", "ISO 4217 currency 'XAU' has no minor unit"),
        ("usd", "unknown ISO 4217 currency 'usd'"),
    ],
)
def test_exponent_of_an_unknown_code(code: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        exponent(code)


class Priced(BaseModel):
    currency: CurrencyCode


def test_currency_code_field() -> None:
    assert Priced(currency="JPY").currency == "JPY"
    assert Priced.model_validate_json('{"currency": "BHD"}').currency == "BHD"
    schema = Priced.model_json_schema()["properties"]["currency"]
    assert schema["pattern"] == "^[A-Z]{3}$"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("XYZ", "unknown ISO 4217 currency 'XYZ'"),
        ("usd", "currency 'usd' must be uppercase: 'USD'"),
        ("XDR", "'XDR' has no minor unit: it is not billable"),
        ("", "unknown ISO 4217 currency ''"),
        (840, "Input should be a valid string"),
    ],
)
def test_currency_code_field_errors(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Priced(currency=value)


def test_generator_refuses_a_contradictory_list(tmp_path: Path) -> None:
    entry = (
        "<CcyNtry><CtryNm>{country}</CtryNm><CcyNm>Dollar</CcyNm><Ccy>ABC</Ccy>"
        "<CcyNbr>001</CcyNbr><CcyMnrUnts>{units}</CcyMnrUnts></CcyNtry>"
    )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><ISO_4217 Pblshd="2030-01-01"><CcyTbl>'
        + entry.format(country="A", units=2)
        + entry.format(country="B", units=3)
        + "</CcyTbl></ISO_4217>"
    )
    path = tmp_path / "list-one.xml"
    path.write_text(xml, encoding="utf-8")
    with pytest.raises(ValueError, match="ABC listed as both"):
        gen_currencies.read_list(path)


def test_generator_merges_duplicates_and_skips_na(tmp_path: Path) -> None:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><ISO_4217 Pblshd="2030-01-01"><CcyTbl>'
        "<CcyNtry><CtryNm>A</CtryNm><CcyNm>Dinar</CcyNm><Ccy>DDD</Ccy>"
        "<CcyMnrUnts>3</CcyMnrUnts></CcyNtry>"
        "<CcyNtry><CtryNm>B</CtryNm><CcyNm>Dinar</CcyNm><Ccy>DDD</Ccy>"
        "<CcyMnrUnts>3</CcyMnrUnts></CcyNtry>"
        "<CcyNtry><CtryNm>ANTARCTICA</CtryNm><CcyNm>No universal currency</CcyNm></CcyNtry>"
        "<CcyNtry><CtryNm>ZZ</CtryNm><CcyNm>Gold</CcyNm><Ccy>XAU</Ccy>"
        "<CcyMnrUnts>N.A.</CcyMnrUnts></CcyNtry>"
        "</CcyTbl></ISO_4217>"
    )
    path = tmp_path / "list-one.xml"
    path.write_text(xml, encoding="utf-8")
    table = gen_currencies.read_list(path)
    assert table.published == "2030-01-01"
    assert table.currencies == (gen_currencies.Currency("DDD", "Dinar", 3),)
    assert table.excluded == ("XAU",)
    text = gen_currencies.render(table)
    assert '"DDD": 3,' in text and "published 2030-01-01" in text
