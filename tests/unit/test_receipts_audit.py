"""What ``billstream receipts audit`` says of a receipt whose content differs from its
document now: the first differing key path, with the value on each side."""

from __future__ import annotations

from typing import Any

import pytest

from workers.ops.receipts import first_difference


@pytest.mark.parametrize(
    ("attested", "now", "found"),
    [
        ({"total": 1080, "tax": 80}, {"total": 1081, "tax": 80}, ("total", 1080, 1081)),
        ({"a": 1, "b": 2}, {"a": 1, "b": 2}, None),
        ({"lines": [{"amount": 5}, {"amount": 7}]}, {"lines": [{"amount": 5}, {"amount": 8}]},
         ("lines[1].amount", 7, 8)),
        ({"lines": [1]}, {"lines": [1, 2]}, ("lines[1]", None, [2])),
        ({"memo": "x"}, {}, ("memo", "x", None)),
        ({}, {"memo": "x"}, ("memo", None, "x")),
        ({"amount": 1}, {"amount": "1"}, ("amount", 1, "1")),
        ({"amount": 1}, {"amount": True}, ("amount", 1, True)),
    ],
)  # fmt: skip
def test_the_first_differing_key_path_is_named(
    attested: dict[str, Any], now: dict[str, Any], found: tuple[str, Any, Any] | None
) -> None:
    assert first_difference(attested, now) == found
