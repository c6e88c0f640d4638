"""``docs/events.md``: the catalogue of topics and messages, generated from the same source
as the exported JSON Schemas (``schemas/catalog.py`` and ``schemas/topics.py``).

Regenerate with ``billstream schemas docs``; a unit test fails when the committed file
is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.catalog import CATALOG, MessageSpec, schema_file_name
from schemas.envelope import CloudEvent
from schemas.topics import TOPICS, TopicSpec, dlq
from workers.ops.contracts import current

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
REGENERATE = "billstream schemas docs"

Schema = dict[str, Any]


def _deref(node: Any, root: Schema) -> Schema:
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        target: Any = root
        for part in node["$ref"][2:].split("/"):
            target = target.get(part, {})
        node = {**{k: v for k, v in node.items() if k != "$ref"}, **target}
    return node if isinstance(node, dict) else {}


def _alts(node: Schema, root: Schema) -> list[Schema]:
    node = _deref(node, root)
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            return [a for alt in node[key] for a in _alts(alt, root)]
    return [node]


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _type(node: Schema, root: Schema) -> str:
    alts = _alts(node, root)
    names: list[str] = []
    for a in alts:
        if "const" in a:
            names.append(f"`{json.dumps(a['const'])}`")
        elif isinstance(a.get("enum"), list):
            names.append("one of " + ", ".join(f"`{json.dumps(v)}`" for v in a["enum"]))
        elif a.get("type") == "array":
            names.append(f"array of {_type(a.get('items', {}), root)}")
        elif a.get("type") == "object" or "properties" in a:
            extra = a.get("additionalProperties")
            if isinstance(extra, dict) and not a.get("properties"):
                names.append(f"map of string to {_type(extra, root)}")
            else:
                names.append(f"object ({a['title']})" if a.get("title") else "object")
        elif isinstance(a.get("type"), str):
            t = a["type"]
            if a.get("format"):
                t += f" ({a['format']})"
            names.append(t)
        else:
            names.append("any")
    if sorted(names) == ["number", "string"]:
        return "decimal (JSON number or string)"
    return " or ".join(dict.fromkeys(names))


_CONSTRAINTS = (
    ("pattern", "pattern `{}`"),
    ("minLength", "min length {}"),
    ("maxLength", "max length {}"),
    ("minimum", "≥ {}"),
    ("exclusiveMinimum", "> {}"),
    ("maximum", "≤ {}"),
    ("exclusiveMaximum", "< {}"),
    ("minItems", "at least {} items"),
    ("maxItems", "at most {} items"),
)


def _notes(node: Schema, root: Schema, required: bool) -> str:
    parts: list[str] = []
    desc = node.get("description") or _deref(node, root).get("description")
    if desc:
        parts.append(str(desc).strip().rstrip(".") + ".")
    constraints: list[str] = []
    for a in _alts(node, root):
        for key, fmt in _CONSTRAINTS:
            if key in a:
                constraints.append(fmt.format(a[key]))
    if constraints:
        parts.append("; ".join(dict.fromkeys(constraints)) + ".")
    if not required and "default" in node and node["default"] not in (None, [], {}):
        parts.append(f"Default `{json.dumps(node['default'])}`.")
    return _cell(" ".join(parts))


def _rows(node: Schema, root: Schema, prefix: str, depth: int, seen: tuple[str, ...]) -> list[str]:
    """Table rows for the properties of ``node`` (objects and arrays of objects expanded)."""
    node = _deref(node, root)
    props: dict[str, Any] = node.get("properties", {})
    required = set(node.get("required", []))
    rows: list[str] = []
    for name, prop in props.items():
        path = f"{prefix}{name}"
        is_required = name in required
        rows.append(
            f"| `{path}` | {_cell(_type(prop, root))} | {'yes' if is_required else 'no'} "
            f"| {_notes(prop, root, is_required)} |"
        )
        if depth >= 6:
            continue
        for alt in _alts(prop, root):
            title = alt.get("title", "")
            if alt.get("properties") and title not in seen:
                rows += _rows(alt, root, f"{path}.", depth + 1, (*seen, title))
            items = _deref(alt.get("items", {}), root) if alt.get("type") == "array" else {}
            if items.get("properties") and items.get("title", "") not in seen:
                rows += _rows(items, root, f"{path}[].", depth + 1, (*seen, items.get("title", "")))
    return rows


def _envelope_schema() -> Schema:
    return CloudEvent.model_json_schema(mode="validation")


def _message_rows(spec: MessageSpec, schema: Schema) -> list[str]:
    envelope = _envelope_schema()["properties"]
    own: Schema = {
        **schema,
        "properties": {
            k: v
            for k, v in schema.get("properties", {}).items()
            if k in ("type", "data") or envelope.get(k) != v
        },
    }
    return _rows(own, schema, "", 0, (str(schema.get("title", "")),))


def render() -> str:
    schemas = current()
    by_topic: dict[str, list[MessageSpec]] = {}
    for spec in CATALOG:
        by_topic.setdefault(spec.topic, []).append(spec)
    out: list[str] = [
        "# Topics and events",
        "",
        f"<!-- Generated by `{REGENERATE}` from schemas/catalog.py and schemas/topics.py;"
        " do not edit by hand. -->",
        "",
        "Every topic billstream reads or writes, its partition key, and every message on it"
        " with its fields. The same source produces the JSON Schemas (`billstream schemas"
        " export`; the published ones are committed under `schemas/published/`) and the"
        " per-worker AsyncAPI documents. Amounts are integer minor units of the message's"
        " currency; decimals are exact (JSON numbers or strings, never binary floats).",
        "",
        "## Topics",
        "",
        "| topic | partition key | written by | read by | dead letters | messages |",
        "|---|---|---|---|---|---|",
    ]
    for t in TOPICS:
        types = (
            ", ".join(f"[`{s.ce_type}`](#{_anchor(s)})" for s in by_topic.get(t.name, [])) or "—"
        )
        out.append(
            f"| `{t.name}` | `{t.key}` | {_cell(t.written_by)} | {_cell(t.read_by)} "
            f"| {f'`{dlq(t.name)}`' if t.dead_letter else '—'} | {types} |"
        )
    env = _envelope_schema()
    out += [
        "",
        "## The envelope",
        "",
        "Every message is a [CloudEvents 1.0](https://cloudevents.io) JSON object (structured"
        " mode) with these attributes; the sections below list only what each message adds"
        " or narrows (its `type`, its `data`, and any attribute it constrains further)."
        " On a topic, `id` and `time` are required too: consumers refuse a message without"
        " them, since redeliveries must keep their identity. Extensions: `tenantid` (every"
        " message belongs to one tenant), `correlationid`, `causationid`, `dataversion`.",
        "",
        "| attribute | type | required | notes |",
        "|---|---|---|---|",
        *_rows(env, env, "", 0, ("CloudEvent",)),
    ]
    listed = {t.name for t in TOPICS}
    unlisted = [
        TopicSpec(name, "(not in schemas/topics.py)", "?", "?", dead_letter=False)
        for name in by_topic
        if name not in listed
    ]
    for t in (*TOPICS, *unlisted):
        specs = by_topic.get(t.name, [])
        if not specs:
            continue
        out += [
            "",
            f"## `{t.name}`",
            "",
            f"Key `{t.key}`. Written by {t.written_by}; read by {t.read_by}.",
        ]
        for spec in specs:
            schema = schemas[schema_file_name(spec)]
            doc = (spec.model.__doc__ or "").strip()
            out += [
                "",
                f"### {_title(spec)}",
                "",
                f"{spec.kind}, `dataversion` {spec.dataversion}. JSON Schema:"
                f" `{schema_file_name(spec)}`.",
            ]
            if doc and not doc.startswith(("Base envelope", "A usage event on the topic")):
                out += ["", " ".join(doc.split())]
            elif spec.ce_type == "*":
                out += [
                    "",
                    "The producer's own event `type` (`llm.completion`); `subject` is the"
                    " customer; `(tenantid, source, id)` identifies it.",
                ]
            out += [
                "",
                "| field | type | required | notes |",
                "|---|---|---|---|",
                *_message_rows(spec, schema),
            ]
    return "\n".join(out) + "\n"


def _title(spec: MessageSpec) -> str:
    return "usage event (any `type`)" if spec.ce_type == "*" else f"`{spec.ce_type}`"


def _anchor(spec: MessageSpec) -> str:
    text = "usage event (any type)" if spec.ce_type == "*" else spec.ce_type
    return "".join(c for c in text.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def write(path: Path = DOC) -> Path:
    path.write_text(render())
    return path
