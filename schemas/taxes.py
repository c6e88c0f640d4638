"""Taxes: tax rates as resources (``CreateTaxRate`` on ``billstream.commands.invoicing.v1``,
``tax_rate.created`` / ``tax_rate.updated`` on ``billstream.events.invoicing.v1``), customers'
tax identities, and the tax breakdown every invoice, line and credit note carries
(docs/taxes.md).

A tax rate has a ``name`` that tenant defaults, customers, plans, prices and one-off lines
refer to, and versions (each with its own ``id``) in force from ``effective_from`` until
``effective_until``: a rate change is a new version, never a rewrite of an invoice.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema as cs

from schemas.bounds import ID_PATTERN, EventTime, Line, ShowBounds, Text, show_model_bounds
from schemas.decimals import DecimalStr
from schemas.envelope import CloudEvent
from schemas.locales import Locale
from schemas.pricing import NonNegDecimal, RateName, TaxRateNames

MAX_TAX_IDS = 5
TaxStatus = Literal["taxable", "exempt", "reverse_charge"]
TaxRounding = Literal["invoice", "line"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _percentage(value: Decimal) -> Decimal:
    if value > Decimal(100):
        raise ValueError("must be a percentage from 0 to 100 ('12' is 12 %)")
    return value


Percentage = Annotated[
    NonNegDecimal,
    AfterValidator(_percentage),
    ShowBounds(  # beside the anyOf: the pattern bounds the string form, maximum the integer
        {"pattern": r"^0*(100(\.0+)?|[0-9]{1,2}(\.[0-9]{1,12}0*)?)$", "maximum": 100}
    ),
]

_FACTOR = re.compile(r"^\s*([0-9]+)\s*/\s*([0-9]+)\s*$|^\s*([0-9]+(\.[0-9]+)?)\s*$")


def parse_factor(text: str) -> Fraction:
    """``"11/12"``, ``"0.5"`` or ``"1"`` as an exact fraction, more than 0 and at most 1."""
    m = _FACTOR.fullmatch(text)
    if m is None:
        raise ValueError(f"must be a fraction like '11/12' or a decimal like '0.5', got {text!r}")
    if m.group(3) is not None:
        value = Fraction(Decimal(m.group(3)))
    else:
        num, den = int(m.group(1)), int(m.group(2))
        if den == 0 or num > 10**6 or den > 10**6:
            raise ValueError(
                f"{text!r}: numerator and denominator at most 1000000, denominator not 0"
            )
        value = Fraction(num, den)
    if not Fraction(0) < value <= Fraction(1):
        raise ValueError(f"must be more than 0 and at most 1, got {text!r}")
    return value


def _factor_text(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError(f"must be a string, not a float ({value!r}): write it as '11/12' or '0.5'")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        parse_factor(value)
        return value.replace(" ", "")
    raise ValueError("must be a string like '11/12' or '0.5'")


Factor = Annotated[
    str,
    BeforeValidator(_factor_text),
    ShowBounds(  # what it reads; its value (more than 0, at most 1) a pattern cannot say
        {
            "pattern": r"^([0-9]{1,6}|1000000)/([1-9][0-9]{0,5}|1000000)$"
            r"|^[0-9]{1,6}(\.[0-9]{1,12})?$"
        }
    ),
]
RateNames = TaxRateNames


# --- tax rates -----------------------------------------------------------------------


class TaxRateSpec(_Model):
    """One version of a tax rate."""

    id: str = Field(pattern=ID_PATTERN, description="This version's id (chosen or assigned)")
    name: RateName = Field(
        description="What customers, plans, prices and lines refer to; versions of one name "
        "may not overlap in time"
    )
    display_name: Line = Field(min_length=1, max_length=64, description="'PPN', 'VAT'")
    description: Text | None = Field(default=None, max_length=1024)
    percentage: Percentage = Field(description="'12' is 12 %; 0 to 100, as a string")
    inclusive: bool = Field(
        default=False,
        description="Prices already include this tax (the net is derived from the gross); "
        "every version of a name is inclusive, or none is",
    )
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")
    jurisdiction: Line | None = Field(
        default=None, max_length=128, description="A state or region, e.g. 'DE-BY'"
    )
    taxable_base_factor: Factor = Field(
        default="1",
        description="The share of the price that is taxed: '11/12' for Indonesian PPN's DPP "
        "(more than 0, at most 1)",
    )
    effective_from: EventTime | None = Field(
        default=None, description="In force from this time (inclusive); absent: always was"
    )
    effective_until: EventTime | None = Field(
        default=None, description="In force until this time (exclusive); absent: open-ended"
    )

    @model_validator(mode="after")
    def _window(self) -> TaxRateSpec:
        if (
            self.effective_from is not None
            and self.effective_until is not None
            and self.effective_until <= self.effective_from
        ):
            raise ValueError("'effective_until' must be after 'effective_from'")
        return self


class CreateTaxRate(CloudEvent):
    """Create a tax rate version, or change one no invoice has used (a used one may only be
    closed: its ``effective_until`` set)."""

    type: Literal["CreateTaxRate"] = "CreateTaxRate"
    data: TaxRateSpec


class TaxRateData(TaxRateSpec):
    used: bool = Field(default=False, description="An invoice used it: it is immutable")


class TaxRateCreated(CloudEvent):
    type: Literal["tax_rate.created"] = "tax_rate.created"
    data: TaxRateData


class TaxRateUpdated(CloudEvent):
    type: Literal["tax_rate.updated"] = "tax_rate.updated"
    data: TaxRateData


# --- tax identities ------------------------------------------------------------------

# EU VAT numbers: the country prefix, then the national format (VIES)
EU_VAT = {
    "AT": r"U\d{8}",
    "BE": r"[01]\d{9}",
    "BG": r"\d{9,10}",
    "CY": r"\d{8}[A-Z]",
    "CZ": r"\d{8,10}",
    "DE": r"\d{9}",
    "DK": r"\d{8}",
    "EE": r"\d{9}",
    "EL": r"\d{9}",
    "ES": r"[A-Z0-9]\d{7}[A-Z0-9]",
    "FI": r"\d{8}",
    "FR": r"[A-HJ-NP-Z0-9]{2}\d{9}",
    "HR": r"\d{11}",
    "HU": r"\d{8}",
    "IE": r"\d{7}[A-W][A-I]?|\d[A-Z+*]\d{5}[A-W]",
    "IT": r"\d{11}",
    "LT": r"\d{9}|\d{12}",
    "LU": r"\d{8}",
    "LV": r"\d{11}",
    "MT": r"\d{8}",
    "NL": r"\d{9}B\d{2}",
    "PL": r"\d{10}",
    "PT": r"\d{9}",
    "RO": r"[1-9]\d{1,9}",
    "SE": r"\d{12}",
    "SI": r"\d{8}",
    "SK": r"\d{10}",
    "XI": r"\d{9}|\d{12}|GD\d{3}|HA\d{3}",
}
_SEPARATORS = re.compile(r"[\s.\-]")
TaxIdType = Literal["id_npwp", "eu_vat", "gb_vat", "other"]


def normalize_tax_id(kind: str, value: str) -> str:
    """The tax ID without separators, upper case; ``ValueError`` saying why it is invalid."""
    if kind == "other":
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()
    v = _SEPARATORS.sub("", value).upper()
    if kind == "id_npwp":
        if not re.fullmatch(r"\d{16}", v, re.ASCII):
            raise ValueError(
                f"an Indonesian NPWP has 16 digits (separators allowed), got {value!r}"
            )
    elif kind == "eu_vat":
        pattern = EU_VAT.get(v[:2])
        if pattern is None:
            raise ValueError(
                f"an EU VAT number starts with its country code (DE, FR, ..., EL for Greece), "
                f"got {value!r}"
            )
        if not re.fullmatch(pattern, v[2:], re.ASCII):
            raise ValueError(f"{value!r} is not a valid {v[:2]} VAT number")
    elif kind == "gb_vat" and not re.fullmatch(r"GB(\d{9}|\d{12}|GD\d{3}|HA\d{3})", v, re.ASCII):
        raise ValueError(f"a UK VAT number is GB and 9 or 12 digits, got {value!r}")
    return v


_SEP = r"[ .\-]*"  # the separators a tax ID may be written with (one of those removed)


def _spelled(pattern: str) -> str:
    """``pattern`` of a normalised tax ID, with the separators it may be written with."""
    return f"^{_SEP}(?:{pattern}){_SEP}$"


_TAX_ID_PATTERNS = {
    "id_npwp": _spelled(f"(?:[0-9]{_SEP}){{15}}[0-9]"),
    "eu_vat": _spelled(
        "|".join(f"{cc}(?:{p})" for cc, p in EU_VAT.items()).replace(r"\d", "[0-9]")
    ),
    "gb_vat": _spelled(r"GB(?:[0-9]{9}|[0-9]{12}|GD[0-9]{3}|HA[0-9]{3})"),
    "other": r"[A-Za-z0-9]",
}


class TaxId(_Model):
    type: TaxIdType = Field(
        description="id_npwp: Indonesian NPWP (16 digits); eu_vat: EU VAT number with its "
        "country prefix; gb_vat: UK VAT number; other: any, unchecked"
    )
    value: Line = Field(min_length=1, max_length=64)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # the format of each type, as normalize_tax_id checks it (in OpenAPI only)
        rules = [
            {"if": {"properties": {"type": {"const": kind}}},
             "then": {"properties": {"value": {"pattern": pattern}}}}
            for kind, pattern in _TAX_ID_PATTERNS.items()
        ]  # fmt: skip
        return show_model_bounds(cls is TaxId, core_schema, handler, {"allOf": rules})

    @model_validator(mode="after")
    def _valid(self) -> TaxId:
        object.__setattr__(self, "value", normalize_tax_id(self.type, self.value))
        return self


# --- breakdowns ----------------------------------------------------------------------


class TaxAmount(_Model):
    """One rate's share of an invoice, a line or a credit note."""

    tax_rate_id: str | None = Field(
        default=None,
        description="The rate version; None for a customer's or line's bare 'tax_rate'",
    )
    name: str
    display_name: str
    percentage: DecimalStr
    inclusive: bool
    country: str | None = None
    jurisdiction: str | None = None
    taxable_base_factor: str = "1"
    taxable_amount: int = Field(description="The net amount the rate applies to, minor units")
    taxable_base: int = Field(
        description="taxable_amount x taxable_base_factor, rounded once (PPN's DPP)"
    )
    tax: int = Field(description="Minor units")
    taxability: TaxStatus = Field(
        default="taxable", description="exempt and reverse_charge: the tax is 0"
    )


class Buyer(_Model):
    """The customer as the invoice was finalized: what a tax report lists."""

    name: str
    email: str | None = None
    tax_ids: list[TaxId] = Field(default_factory=list)
    billing_address: dict[str, Any] | None = None
    tax_status: TaxStatus = "taxable"
    locale: Locale | None = Field(
        default=None, description="The customer's locale: the language of its documents"
    )


COMMANDS: tuple[type[CloudEvent], ...] = (CreateTaxRate,)
EVENTS: tuple[type[CloudEvent], ...] = (TaxRateCreated, TaxRateUpdated)
