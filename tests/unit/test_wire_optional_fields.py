"""A message is written with ``exclude_none`` (``CloudEvent.to_json``): a field that may be
None must then have a default, or the message it is None in cannot be read back (it was the
case of ``subscription_id`` on a top-up's invoice events, dead-lettered by payments)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel

from schemas.catalog import CATALOG


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names (through unions, lists, Annotated…)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _nullable(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _nullable(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return type(None) in typing.get_args(annotation)
    return annotation is type(None)


def _required_nullable(model: type[BaseModel], seen: set[type[BaseModel]]) -> list[str]:
    if model in seen:
        return []
    seen.add(model)
    found = [
        f"{model.__name__}.{name}"
        for name, field in model.model_fields.items()
        if field.is_required() and _nullable(field.annotation)
    ]
    for field in model.model_fields.values():
        for nested in _models(field.annotation):
            found += _required_nullable(nested, seen)
    return found


def test_every_field_that_may_be_none_has_a_default() -> None:
    seen: set[type[BaseModel]] = set()
    found = [f for spec in CATALOG for f in _required_nullable(spec.model, seen)]
    assert found == []


def test_the_check_finds_a_required_field_that_may_be_none() -> None:
    class Inner(BaseModel):
        x: str | None

    class Outer(BaseModel):
        inner: list[Inner]

    assert _required_nullable(Outer, set()) == ["Inner.x"]
