"""Is a message's new JSON Schema compatible with the one already published?

Compatible means: everything the published schema accepted, the new one accepts too (old
messages on the topics, replays, stay readable), and no field a consumer may rely on
disappears. So these are breaks: a field removed, a required field added (or an optional
one made required), a type narrowed (a type or union alternative dropped, ``integer``
where ``number`` was), an enum or const value removed (or an enum added), a constraint
tightened (pattern or format added or changed, a smaller maximum, a larger minimum,
shorter lengths, fewer items), extra properties forbidden where they were allowed.
New optional fields, wider types, looser constraints and new descriptions are fine.

It understands what pydantic v2 emits (``$ref``/``$defs``, ``anyOf``/``oneOf``, ``const``,
``enum``, objects, arrays, strings, numbers); anything it does not know it compares by
equality, so it errs on the side of reporting a break.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]

_ANY_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
_IGNORED = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$comment",
        "$schema",
        "$defs",
        "x-billstream",
        "discriminator",
    }
)


@dataclass(frozen=True)
class Break:
    path: str  # "data.lines[].sku"; "(root)" for the message itself
    kind: str  # "field removed", "required field added", "type narrowed", ...
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}: {self.detail}"


def compare(old: Schema, new: Schema) -> list[Break]:
    """Every way ``new`` breaks what ``old`` promised (empty: compatible)."""
    return list(dict.fromkeys(_Comparison(old, new).node(old, new, "")))


class _Comparison:
    def __init__(self, old_root: Schema, new_root: Schema) -> None:
        self.old_root = old_root
        self.new_root = new_root
        self._seen: set[tuple[str, str, str]] = set()

    # --- helpers ---------------------------------------------------------------------

    @staticmethod
    def _deref(node: Any, root: Schema) -> Schema:
        for _ in range(64):
            if not isinstance(node, dict):
                return {}
            ref = node.get("$ref")
            if not isinstance(ref, str):
                allof = node.get("allOf")
                if isinstance(allof, list) and len(allof) == 1 and len(node) <= 3:
                    node = {**{k: v for k, v in node.items() if k != "allOf"}, **allof[0]}
                    continue
                return node
            if not ref.startswith("#/"):
                return node  # external: compared by equality
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
            node = {**{k: v for k, v in node.items() if k != "$ref"}, **target}
        return node if isinstance(node, dict) else {}

    def _alternatives(self, node: Any, root: Schema) -> list[Schema]:
        node = self._deref(node, root)
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                out: list[Schema] = []
                for alt in node[key]:
                    out.extend(self._alternatives(alt, root))
                return out
        return [node]

    @staticmethod
    def _types(node: Schema) -> frozenset[str]:
        t = node.get("type")
        if isinstance(t, str):
            return frozenset({t})
        if isinstance(t, list):
            return frozenset(t)
        values = _values(node)
        if values is not None:
            return frozenset(_json_type(v) for v in values)
        if "properties" in node or "additionalProperties" in node:
            return frozenset({"object"})
        if "items" in node:
            return frozenset({"array"})
        return _ANY_TYPES

    @staticmethod
    def _covers(new_types: frozenset[str], old_types: frozenset[str]) -> bool:
        widened = set(new_types) | ({"integer"} if "number" in new_types else set())
        return set(old_types) <= widened

    # --- comparison ------------------------------------------------------------------

    def node(self, old: Any, new: Any, path: str) -> Iterator[Break]:
        old_alts = self._alternatives(old, self.old_root)
        new_alts = self._alternatives(new, self.new_root)
        for o in old_alts:
            candidates = [n for n in new_alts if self._covers(self._types(n), self._types(o))]
            if not candidates:
                yield Break(
                    _p(path),
                    "type narrowed",
                    f"{_describe(o)} was accepted; now only {_describe_all(new_alts)}",
                )
                continue
            best: list[Break] | None = None
            for n in candidates:
                found = list(self.single(o, n, path))
                if best is None or len(found) < len(best):
                    best = found
                if not found:
                    break
            yield from best or []

    def single(self, o: Schema, n: Schema, path: str) -> Iterator[Break]:
        key = (path, _fingerprint(o), _fingerprint(n))
        if key in self._seen:  # a recursive model: already being compared
            return
        self._seen.add(key)
        old_types, new_types = self._types(o), self._types(n)
        if not self._covers(new_types, old_types):
            yield Break(_p(path), "type narrowed", f"{_describe(o)} -> {_describe(n)}")
            return
        yield from self._values(o, n, path)
        yield from self._constraints(o, n, path)
        if "object" in old_types:
            yield from self._object(o, n, path)
        if "array" in old_types and ("items" in o or "items" in n):
            yield from self.node(o.get("items", {}), n.get("items", {}), path + "[]")
        known = {
            "type", "enum", "const", "properties", "required", "additionalProperties",
            "items", "anyOf", "oneOf", "allOf", "$ref", *_TIGHTER, *_LOOSER, *_EQUAL,
        }  # fmt: skip
        for k in sorted((set(o) | set(n)) - known - _IGNORED):
            if o.get(k) != n.get(k):
                yield Break(_p(path), "keyword changed", f"{k}: {o.get(k)!r} -> {n.get(k)!r}")

    def _values(self, o: Schema, n: Schema, path: str) -> Iterator[Break]:
        new_values = _values(n)
        if new_values is None:
            return
        old_values = _values(o)
        if old_values is None:
            yield Break(_p(path), "enum added", f"now only {_list(new_values)}")
            return
        removed = [v for v in old_values if v not in new_values]
        if removed:
            yield Break(_p(path), "enum value removed", _list(removed))

    def _constraints(self, o: Schema, n: Schema, path: str) -> Iterator[Break]:
        for k, tighter in _TIGHTER.items():
            if k in n and (k not in o or tighter(n[k], o[k])):
                yield Break(_p(path), "constraint tightened", f"{k}: {o.get(k)!r} -> {n[k]!r}")
        for k in _EQUAL:
            if k in n and o.get(k) != n[k]:
                yield Break(_p(path), "constraint changed", f"{k}: {o.get(k)!r} -> {n[k]!r}")

    def _object(self, o: Schema, n: Schema, path: str) -> Iterator[Break]:
        old_props: dict[str, Any] = o.get("properties", {})
        new_props: dict[str, Any] = n.get("properties", {})
        old_required = set(o.get("required", []))
        new_required = set(n.get("required", []))
        for name in old_props:
            if name not in new_props:
                yield Break(_p(_join(path, name)), "field removed", "consumers may read it")
            else:
                yield from self.node(old_props[name], new_props[name], _join(path, name))
        for name in sorted(new_required - old_required):
            if name in old_props:
                yield Break(_p(_join(path, name)), "field became required", "it was optional")
            else:
                yield Break(_p(_join(path, name)), "required field added", "old messages lack it")
        old_extra = o.get("additionalProperties", True)
        new_extra = n.get("additionalProperties", True)
        if new_extra is False and old_extra is not False:
            yield Break(_p(path), "constraint tightened", "additional properties now forbidden")
        elif isinstance(new_extra, dict):
            yield from self.node(
                {} if old_extra is True else old_extra, new_extra, _join(path, "{}")
            )


_TIGHTER: dict[str, Any] = {
    "maxLength": lambda new, old: new < old,
    "maxItems": lambda new, old: new < old,
    "maxProperties": lambda new, old: new < old,
    "maximum": lambda new, old: new < old,
    "exclusiveMaximum": lambda new, old: new < old,
    "minLength": lambda new, old: new > old,
    "minItems": lambda new, old: new > old,
    "minProperties": lambda new, old: new > old,
    "minimum": lambda new, old: new > old,
    "exclusiveMinimum": lambda new, old: new > old,
    "multipleOf": lambda new, old: old % new != 0,
    "uniqueItems": lambda new, old: bool(new) and not old,
}
_LOOSER: frozenset[str] = frozenset()
_EQUAL = ("pattern", "format", "propertyNames", "patternProperties", "prefixItems")


def _values(node: Schema) -> list[Any] | None:
    if "const" in node:
        return [node["const"]]
    if isinstance(node.get("enum"), list):
        return list(node["enum"])
    return None


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _fingerprint(node: Schema) -> str:
    import json

    return json.dumps(node, sort_keys=True, default=str)[:2000]


def _describe(node: Schema) -> str:
    values = _values(node)
    if values is not None:
        return _list(values)
    types = _Comparison._types(node)
    return "any" if types == _ANY_TYPES else "/".join(sorted(types))


def _describe_all(nodes: list[Schema]) -> str:
    return " | ".join(_describe(n) for n in nodes)


def _list(values: list[Any]) -> str:
    import json

    return ", ".join(json.dumps(v) for v in values)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _p(path: str) -> str:
    return path or "(root)"
