"""The bounds every value a client or a Kafka-native producer sends must respect, in one
place (docs/adr/0043-bounded-values.md).

Bad input is answered at the door: a value outside these bounds is refused by validation
(422 naming the field over HTTP; dead-lettered as undecodable when read off a topic), never
accepted and failed later. The bounds are chosen so that every value fits its storage type
and every JSON client reads it exactly:

* metered values (every number in usage ``data``, and every string there that spells a
  number, since meters read those as numbers): finite, ``|v| <= 10**15``, at most 12
  decimal places; quantities and amounts in plans: ``0 <= q < 10**15``, 12 places;
* money in minor units (payments, refunds, POS amounts, spend thresholds):
  ``|amount| <= 10**15`` (below 2**53: exact in every JSON client); sums of up to 9,000 of
  them fit PostgreSQL ``bigint``;
* times a client gives (event times, subscription starts, billing-run ``as_of``, …): their
  UTC form in ``[1970-01-01T00:00:00Z, 2100-01-01T00:00:00Z)``;
* text: no control characters where it is stored (``Line``: no C0 control, no DEL;
  ``Text``: tab, newline and carriage return allowed) and no lone surrogates (they cannot
  be encoded as UTF-8).

The published message schemas (``schemas/published/``) are a contract that may only be
loosened, so the bounds are enforced by validators and shown in JSON Schema (OpenAPI,
AsyncAPI) except when the published schemas are generated (``PublishedJsonSchema``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, Field, GetJsonSchemaHandler
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema as cs

from schemas.currency import MINOR_UNITS, CurrencyCode

# --- the limits --------------------------------------------------------------------------

MAX_FRACTION_DIGITS = 12
MAX_INTEGER_DIGITS = 15
MAX_MAGNITUDE = Decimal(10) ** MAX_INTEGER_DIGITS  # metered values: |v| <= this
MAX_MINOR_UNITS = 10**MAX_INTEGER_DIGITS  # money in minor units: |amount| <= this
MAX_PLAN_FIXED_MINOR_UNITS = 10**17  # a plan's fixed charges (flat fees, minimums) summed
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)  # inclusive
TIME_MAX = datetime(2100, 1, 1, tzinfo=UTC)  # exclusive

_MAX_INT = 10**MAX_INTEGER_DIGITS  # |int| <= this

EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,255}$"  # a customer's external id
ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"  # ids callers choose (subscriptions, runs, grants)


# --- JSON Schema: shown in OpenAPI and AsyncAPI, not in the published snapshots ------------------


class PublishedJsonSchema(GenerateJsonSchema):
    """The generator of the published message schemas (``billstream schemas export``).

    Bounds added after a message was published would tighten its contract (ADR 0023), so
    under this generator they are left out; they are still enforced by validation."""


def publishing(handler: GetJsonSchemaHandler) -> bool:
    """Whether ``handler`` is generating a published message schema."""
    return isinstance(getattr(handler, "generate_json_schema", None), PublishedJsonSchema)


@dataclass(frozen=True)
class ShowBounds:
    """Annotation metadata: add ``keywords`` to the type's JSON Schema, except in the
    published message schemas. Keywords like ``maximum`` or ``pattern`` apply only to
    instances of their JSON type, so adding them beside an ``anyOf`` is safe."""

    keywords: dict[str, Any] = field(default_factory=dict)

    def __get_pydantic_json_schema__(
        self, schema: cs.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        if publishing(handler):
            return json_schema
        out = dict(json_schema)
        _add_keywords(out, self.keywords)
        return out

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self.keywords.items())))


def _add_keywords(out: dict[str, Any], keywords: dict[str, Any]) -> None:
    for key, value in keywords.items():
        if key not in out:
            out[key] = value
        elif out[key] != value:  # e.g. a field's own pattern: both must match
            out.setdefault("allOf", []).append({key: value})


def show_model_bounds(
    declared: bool,
    core_schema: cs.CoreSchema,
    handler: GetJsonSchemaHandler,
    keywords: dict[str, Any],
) -> JsonSchemaValue:
    """``ShowBounds`` for a whole model (a rule between its fields: ``if``/``then``, an
    ``anyOf`` of required sets, ``minProperties``), from its ``__get_pydantic_json_schema__``.

    Only the model that declares the rule shows it (``declared``: ``cls is`` that class);
    the commands that extend it with more fields are left as they are. Never in the
    published schemas."""
    json_schema = handler(core_schema)
    if publishing(handler) or not declared:
        return json_schema
    _add_keywords(handler.resolve_ref_schema(json_schema), keywords)
    return json_schema


def present(name: str) -> dict[str, Any]:
    """JSON Schema: the object has property ``name`` and it is not null."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def nonempty(name: str) -> dict[str, Any]:
    """JSON Schema: the object has property ``name``, an array or object with an item."""
    return {"required": [name], "properties": {name: {"minItems": 1, "minProperties": 1}}}


# --- text ----------------------------------------------------------------------------------

# C0 controls but tab, newline and carriage return; lone surrogates (not encodable as UTF-8)
_TEXT_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
# every C0 control and DEL; lone surrogates
_LINE_FORBIDDEN = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f]*$"
LINE_PATTERN = "^[^\\u0000-\\u001f\\u007f]*$"


def _describe(char: str) -> str:
    return f"U+{ord(char):04X}"


def text_problem(value: str, *, line: bool) -> str | None:
    """Why ``value`` cannot be stored as text (``line``: one line, no tab either), or None."""
    bad = (_LINE_FORBIDDEN if line else _TEXT_FORBIDDEN).search(value)
    if bad is None:
        return None
    what = "a lone surrogate" if "\ud800" <= bad.group() <= "\udfff" else "a control character"
    return f"contains {what} ({_describe(bad.group())}) at position {bad.start()}"


def check_line(value: str) -> str:
    problem = text_problem(value, line=True)
    if problem:
        raise ValueError(problem)
    return value


def check_text(value: str) -> str:
    problem = text_problem(value, line=False)
    if problem:
        raise ValueError(problem)
    return value


def optional_line(value: str | None) -> str | None:
    """``check_line`` as a field validator, for a field with a pattern of its own (an
    ``AfterValidator`` annotation would hide that pattern from its JSON Schema)."""
    return None if value is None else check_line(value)


Line = Annotated[str, AfterValidator(check_line), ShowBounds({"pattern": LINE_PATTERN})]
"""One line of text that is stored (ids, names, subjects, sources, references, URLs):
no control character (not even tab), no DEL, no lone surrogate."""

Text = Annotated[str, AfterValidator(check_text), ShowBounds({"pattern": TEXT_PATTERN})]
"""Free text that is stored (descriptions, reasons, notes): tab, newline and carriage
return allowed; no other control character, no lone surrogate."""

Key = Line  # identifiers without a stricter pattern of their own

LineValue = Annotated[str, AfterValidator(check_line)]
"""``Line`` without the JSON Schema keyword (the CloudEvents envelope, whose schema the
event catalogue documents once for every message)."""

TextValue = Annotated[str, AfterValidator(check_text)]
"""``Text`` without the JSON Schema keyword (envelope attributes copied from HTTP headers,
which may carry a tab)."""


# --- currencies ----------------------------------------------------------------------------

Currency = Annotated[CurrencyCode, ShowBounds({"enum": sorted(MINOR_UNITS)})]
"""``CurrencyCode`` whose OpenAPI schema lists the codes it accepts (the ISO 4217 codes
with a minor unit); the published schemas keep the pattern alone."""


# --- numbers ---------------------------------------------------------------------------------


def decimal_places(value: Decimal) -> int:
    """Decimal places that carry a digit (``1.2500`` has 2); trailing zeros don't count."""
    _, digits, exp = value.as_tuple()
    assert isinstance(exp, int)  # finite
    places = -exp
    i = len(digits) - 1
    while places > 0 and i >= 0 and digits[i] == 0:
        places -= 1
        i -= 1
    return max(places, 0)


def metered_problem(value: Decimal | int) -> str | None:
    """Why ``value`` cannot be a metered value or quantity, or None."""
    if isinstance(value, int):
        if -_MAX_INT <= value <= _MAX_INT:
            return None
        return f"must be at most 10**{MAX_INTEGER_DIGITS} in magnitude"
    if not value.is_finite():
        return "must be a finite number"
    if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:
        return f"must be at most 10**{MAX_INTEGER_DIGITS} in magnitude"
    if decimal_places(value) > MAX_FRACTION_DIGITS:
        return f"at most {MAX_FRACTION_DIGITS} decimal places"
    return None


# how metering reads a number written as a string ("12.5", "-3e2"): the same grammar as
# workers/metering/service.py, so what a meter may read is what is checked here
NUMERIC_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_MAY_BE_NUMERIC = frozenset("+-.0123456789 \t\n\r\f\v")


def _spelled_number(text: str) -> Decimal | None:
    if not text or text[0] not in _MAY_BE_NUMERIC:
        return None
    stripped = text.strip()
    if not NUMERIC_TEXT.fullmatch(stripped):
        return None
    return Decimal(stripped)


def _step(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$\-]*", key):
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def usage_data_problem(data: Any, where: str = "data") -> str | None:
    """Why usage ``data`` cannot be accepted, naming the first bad value, or None.

    Every number (and every string that spells one) must be a valid metered value; every
    string and key must be storable text. Iterative: nesting depth costs no stack. On the
    hot path of every usage event (the ingress and the metering worker's decode): the path
    of a value is spelled only when it is refused."""
    if type(data) is dict and _flat_and_plain(data):
        return None
    keys: list[tuple[int, str | int]] = []  # (parent, key): the path of each value pushed
    stack: list[tuple[Any, int]] = [(data, -1)]
    while stack:
        value, at = stack.pop()
        kind = type(value)
        if kind is int:  # most values: an exact integer in range
            if -_MAX_INT <= value <= _MAX_INT:
                continue
            return f"{_path(where, keys, at)} is {_short(value)}: metered values " + (
                metered_problem(value) or ""
            )
        if kind is str:
            if _TEXT_FORBIDDEN.search(value) is None and (
                not value or value[0] not in _MAY_BE_NUMERIC
            ):
                continue  # plain text, no number
            problem = text_problem(value, line=False)
            if problem is None:
                number = _spelled_number(value)
                if number is None or (reason := metered_problem(number)) is None:
                    continue
                problem = f"is {value!r}, a number to meters that {reason}"
            return f"{_path(where, keys, at)} {problem}"
        if isinstance(value, dict):
            for k, v in value.items():
                key = str(k)
                if _LINE_FORBIDDEN.search(key) is not None:
                    problem = text_problem(key, line=True)
                    return f"{_path(where, keys, at)} has a key that {problem}"
                keys.append((at, key))
                stack.append((v, len(keys) - 1))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                keys.append((at, i))
                stack.append((v, len(keys) - 1))
        elif isinstance(value, Decimal):
            if reason := metered_problem(value):
                return f"{_path(where, keys, at)} is {_short(value)}: metered values {reason}"
        elif isinstance(value, float) and (reason := metered_problem(Decimal(repr(value)))):
            # a binary float: only from Python callers (JSON is parsed to Decimal)
            return f"{_path(where, keys, at)} is {value!r}: metered values {reason}"
    return None


def plain_values(data: dict[str, Any]) -> bool:
    """True for the usual data's values, certainly fine: one level of integers in range and
    strings that spell no number, with no control character in a string (one regex call for
    all of them). False means: look closer. The keys are not checked here."""
    texts: list[str] = []
    for value in data.values():
        kind = type(value)
        if kind is int:
            if -_MAX_INT <= value <= _MAX_INT:
                continue
            return False
        if kind is str:
            if value and value[0] in _MAY_BE_NUMERIC:
                return False
            texts.append(value)
        elif value is not None and kind is not bool:
            return False
    return _TEXT_FORBIDDEN.search("".join(texts)) is None


def _flat_and_plain(data: dict[str, Any]) -> bool:
    """``plain_values``, and no control character in a key (one regex call for all keys)."""
    return _LINE_FORBIDDEN.search("".join(data)) is None and plain_values(data)


def _path(where: str, keys: list[tuple[int, str | int]], at: int) -> str:
    steps: list[str | int] = []
    while at >= 0:
        at, key = keys[at]
        steps.append(key)
    path = where
    for key in reversed(steps):
        path = _step(path, key)
    return path


def _short(value: Decimal | int) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}…({len(text)} characters)"


def check_usage_data(data: dict[str, Any]) -> dict[str, Any]:
    problem = usage_data_problem(data)
    if problem:
        raise ValueError(problem)
    return data


def check_metered(value: Decimal) -> Decimal:
    reason = metered_problem(value)
    if reason:
        raise ValueError(reason)
    return value


def json_integer(value: Any) -> Any:
    """A ``BeforeValidator`` for an integer as JSON Schema means it: a number with no
    fraction (2 or 2.0), never ``true``/``false`` or a string (pydantic's lax mode takes
    both; its strict mode refuses 2.0, which every JSON Schema calls an integer)."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer")
    return value


def check_minor_units(value: int) -> int:
    if not -MAX_MINOR_UNITS <= value <= MAX_MINOR_UNITS:
        raise ValueError(
            f"must be at most 10**{MAX_INTEGER_DIGITS} ({MAX_MINOR_UNITS}) minor units in magnitude"
        )
    return value


MinorUnits = Annotated[
    int,
    AfterValidator(check_minor_units),
    ShowBounds({"minimum": -MAX_MINOR_UNITS, "maximum": MAX_MINOR_UNITS}),
]
"""Money in integer minor units: ``|amount| <= 10**15``."""

PositiveMinorUnits = Annotated[
    int,
    Field(gt=0),  # before the validator, so the JSON Schema still shows it
    AfterValidator(check_minor_units),
    ShowBounds({"maximum": MAX_MINOR_UNITS}),
]
"""A positive amount of money in minor units: ``0 < amount <= 10**15``."""

MeteredValue = Annotated[
    Decimal,
    AfterValidator(check_metered),
    ShowBounds({"maximum": _MAX_INT, "minimum": -_MAX_INT}),
]
"""A metered value: finite, ``|v| <= 10**15``, at most 12 decimal places."""


# --- times ---------------------------------------------------------------------------------

# the year of a time in the window, as its text starts (an offset may still move the UTC
# form out of it at the edges, which validation refuses)
TIME_PATTERN = "^(19[7-9][0-9]|20[0-9][0-9])-"


def check_time(value: datetime) -> datetime:
    """Aware ``value`` whose UTC form is inside [TIME_MIN, TIME_MAX). Comparing aware times
    never overflows (converting 9999-12-31T23:30:00-01:00 to UTC would)."""
    if not TIME_MIN <= value < TIME_MAX:
        raise ValueError(
            "must be from 1970-01-01T00:00:00Z up to (not including) 2100-01-01T00:00:00Z in UTC"
        )
    return value


EventTime = Annotated[
    AwareDatetime, AfterValidator(check_time), ShowBounds({"pattern": TIME_PATTERN})
]
"""A time a client gives, with its offset, whose UTC form is in [1970-01-01T00:00:00Z,
2100-01-01T00:00:00Z)."""

EventTimeValue = Annotated[AwareDatetime, AfterValidator(check_time)]
"""``EventTime`` without the JSON Schema keyword (for the envelope)."""
