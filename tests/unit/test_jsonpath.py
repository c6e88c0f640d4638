"""The JSONPath subset meters use to read event data."""

from __future__ import annotations

import pytest

from schemas.jsonpath import MISSING, JsonPathError, compile_path, evaluate

DATA = {
    "tokens": 12,
    "model": {"name": "gpt", "family": {"id": "g4"}},
    "key with spaces": "spaced",
    'it"s': "quoted-double",
    "items": [{"sku": "a"}, {"sku": "b"}, {"sku": "c"}],
    "flag": False,
    "nothing": None,
    "$weird-name_1": "ok",
}


def read(path: str, data: object = DATA) -> object:
    return evaluate(compile_path(path), data)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$.tokens", 12),
        ("$.model.name", "gpt"),
        ("$.model.family.id", "g4"),
        ("$['key with spaces']", "spaced"),
        ('$["key with spaces"]', "spaced"),
        ("$['it\"s']", "quoted-double"),
        ("$['model']['family'].id", "g4"),
        ("$.items[0].sku", "a"),
        ("$.items[2].sku", "c"),
        ("$.items[-1].sku", "c"),
        ("$.items[-3].sku", "a"),
        ("$.$weird-name_1", "ok"),
        ("$.items", DATA["items"]),
    ],
)
def test_reads_the_value_at_the_path(path: str, expected: object) -> None:
    assert read(path) == expected


def test_falsy_values_are_found_not_missing() -> None:
    assert read("$.flag") is False
    assert read("$.nothing") is None


def test_compiled_steps_are_names_and_integer_indexes() -> None:
    assert compile_path("$.items[-1]['a b'].c") == ("items", -1, "a b", "c")


@pytest.mark.parametrize(
    "path",
    [
        "$.absent",
        "$.model.absent",
        "$.tokens.deeper",  # a number has no properties
        "$.items[3]",  # past the end
        "$.items[-4]",  # before the start
        "$.model[0]",  # an index into an object
        "$.items.sku",  # a property of a list
        "$.model.name[0]",  # strings are not indexable lists
        "$.nothing.x",
    ],
)
def test_missing_paths_evaluate_to_missing(path: str) -> None:
    assert read(path) is MISSING


def test_missing_on_non_container_data() -> None:
    assert evaluate(compile_path("$.a"), None) is MISSING
    assert evaluate(compile_path("$[0]"), {"0": "not a list"}) is MISSING


@pytest.mark.parametrize(
    ("path", "position"),
    [
        ("$.", 1),
        ("$..a", 1),
        ("$.a[", 3),
        ("$.a[x]", 3),
        ("$.a b", 3),
        ("$.a.b[0", 5),
        ("$['unterminated]", 1),
        ("$.a[*]", 3),
        ("$.a[?(@.b)]", 3),
        ("$.1abc", 1),
    ],
)
def test_syntax_errors_name_the_position(path: str, position: int) -> None:
    with pytest.raises(JsonPathError, match=rf"at position {position}\b") as caught:
        compile_path(path)
    # the unparsed remainder is quoted, so a user sees what was not understood
    assert path[position:] in str(caught.value)


def test_a_path_must_start_with_dollar() -> None:
    with pytest.raises(JsonPathError, match=r"starts with '\$'"):
        compile_path("tokens")
    with pytest.raises(JsonPathError, match=r"starts with '\$'"):
        compile_path(".tokens")


def test_the_root_alone_is_refused() -> None:
    with pytest.raises(JsonPathError, match="name a property"):
        compile_path("$")


def test_json_path_error_is_a_value_error() -> None:
    # pydantic turns ValueErrors raised in validators into validation errors
    assert issubclass(JsonPathError, ValueError)
