"""Published message schemas never change incompatibly: the catalog against the committed
snapshot (schemas/published/), and the checker against every kind of break."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from schemas.catalog import CATALOG, schema_file_name
from workers.ops import contracts
from workers.ops.compat import compare


def test_the_catalog_honours_every_published_schema() -> None:
    results = contracts.check_catalog()
    assert {r.file for r in results if r.status == "unchanged"} >= {
        "billstream.usage.v1/usage-event.v1.schema.json",
        "billstream.events.metering.v1/meter.created.v1.schema.json",
    }, "schemas/published/ is missing; run: billstream schemas publish"
    broken = [f"{r.file}: {'; '.join(map(str, r.breaks))}" for r in results if r.failed]
    assert not broken, (
        "published message schemas changed incompatibly (give the message a new dataversion, "
        "or restore the published shape):\n" + "\n".join(broken)
    )


# --- the checker, on synthetic schemas ---------------------------------------------------------


class Line(BaseModel):
    sku: str = Field(max_length=64)
    quantity: int


class Data(BaseModel):
    amount: int
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    status: Literal["draft", "paid"]
    note: str | None = None
    ratio: float = Field(default=1, ge=0)
    lines: list[Line] = []
    tags: dict[str, str] = {}


class Event(BaseModel):
    type: Literal["thing.happened"] = "thing.happened"
    data: Data


OLD = Event.model_json_schema()


def mutate(change: Any) -> dict[str, Any]:
    new = copy.deepcopy(OLD)
    change(new)
    return new


def props(schema: dict[str, Any], model: str) -> dict[str, Any]:
    result: dict[str, Any] = schema["$defs"][model]["properties"]
    return result


def kinds(new: dict[str, Any]) -> set[tuple[str, str]]:
    return {(b.path, b.kind) for b in compare(OLD, new)}


BREAKS = {
    "field removed": (
        lambda s: props(s, "Data").pop("note"),
        {("data.note", "field removed")},
    ),
    "nested field removed": (
        lambda s: props(s, "Line").pop("quantity"),
        {("data.lines[].quantity", "field removed")},
    ),
    "required field added": (
        lambda s: (
            props(s, "Data").update(due={"type": "string"}),
            s["$defs"]["Data"]["required"].append("due"),
        ),
        {("data.due", "required field added")},
    ),
    "optional made required": (
        lambda s: s["$defs"]["Data"]["required"].append("note"),
        {("data.note", "field became required")},
    ),
    "integer to string": (
        lambda s: props(s, "Data")["amount"].update(type="string"),
        {("data.amount", "type narrowed")},
    ),
    "number to integer": (
        lambda s: props(s, "Data")["ratio"].update(type="integer"),
        {("data.ratio", "type narrowed")},
    ),
    "null no longer accepted": (
        lambda s: props(s, "Data").update(note={"type": "string"}),
        {("data.note", "type narrowed")},
    ),
    "enum value removed": (
        lambda s: props(s, "Data")["status"].update(enum=["draft"]),
        {("data.status", "enum value removed")},
    ),
    "const changed": (
        lambda s: s["properties"]["type"].update(const="thing.done"),
        {("type", "enum value removed")},
    ),
    "pattern changed": (
        lambda s: props(s, "Data")["currency"].update(pattern="^[A-Z]{2}$"),
        {("data.currency", "constraint changed")},
    ),
    "max length lowered": (
        lambda s: props(s, "Line")["sku"].update(maxLength=8),
        {("data.lines[].sku", "constraint tightened")},
    ),
    "minimum raised": (
        lambda s: props(s, "Data")["ratio"].update(minimum=1),
        {("data.ratio", "constraint tightened")},
    ),
    "map values narrowed": (
        lambda s: props(s, "Data")["tags"]["additionalProperties"].update(type="integer"),
        {("data.tags.{}", "type narrowed")},
    ),
    "extra properties forbidden": (
        lambda s: s["$defs"]["Data"].update(additionalProperties=False),
        {("data", "constraint tightened")},
    ),
    "enum added": (
        lambda s: props(s, "Data")["currency"].update(enum=["EUR"]),
        {("data.currency", "enum added")},
    ),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_the_checker_catches(name: str) -> None:
    change, expected = BREAKS[name]
    assert kinds(mutate(change)) == expected


COMPATIBLE = {
    "optional field added": lambda s: props(s, "Data").update(memo={"type": "string"}),
    "enum value added": lambda s: props(s, "Data")["status"].update(enum=["draft", "paid", "void"]),
    "max length raised": lambda s: props(s, "Line")["sku"].update(maxLength=128),
    "integer widened to number": lambda s: props(s, "Data")["amount"].update(type="number"),
    "required made optional": lambda s: s["$defs"]["Data"]["required"].remove("amount"),
    "description and title": lambda s: props(s, "Data")["amount"].update(
        description="minor units", title="Amount!"
    ),
    "pattern dropped": lambda s: props(s, "Data")["currency"].pop("pattern"),
    "null now accepted": lambda s: props(s, "Data").update(
        amount={"anyOf": [{"type": "integer"}, {"type": "null"}]}
    ),
}


@pytest.mark.parametrize("name", sorted(COMPATIBLE))
def test_the_checker_accepts(name: str) -> None:
    assert compare(OLD, mutate(COMPATIBLE[name])) == []


def test_an_inlined_definition_compares_equal_to_its_reference() -> None:
    inlined = mutate(lambda s: s["properties"].update(data=s["$defs"]["Data"]))
    assert compare(OLD, inlined) == []


# --- snapshot statuses and publishing --------------------------------------------------------


def test_check_reports_new_compatible_incompatible_removed_and_superseded() -> None:
    changed = mutate(lambda s: props(s, "Data").pop("amount"))
    widened = mutate(lambda s: props(s, "Data").update(memo={"type": "string"}))
    snapshot = {
        "t/a.v1.schema.json": OLD,
        "t/b.v1.schema.json": OLD,
        "t/c.v1.schema.json": OLD,
        "t/gone.v1.schema.json": OLD,
        "t/d.v1.schema.json": OLD,
    }
    now = {
        "t/a.v1.schema.json": OLD,
        "t/b.v1.schema.json": widened,
        "t/c.v1.schema.json": changed,
        "t/d.v2.schema.json": changed,  # a breaking change under a new dataversion
        "t/new.v1.schema.json": OLD,
    }
    statuses = {r.file: r.status for r in contracts.check(now, snapshot)}
    assert statuses == {
        "t/a.v1.schema.json": "unchanged",
        "t/b.v1.schema.json": "compatible",
        "t/c.v1.schema.json": "incompatible",
        "t/d.v1.schema.json": "superseded",
        "t/d.v2.schema.json": "new",
        "t/gone.v1.schema.json": "removed",
        "t/new.v1.schema.json": "new",
    }
    failed = {r.file for r in contracts.check(now, snapshot) if r.failed}
    assert failed == {"t/c.v1.schema.json", "t/gone.v1.schema.json"}


def test_publish_writes_new_snapshots_and_refuses_incompatible_changes(tmp_path: Path) -> None:
    usage = schema_file_name(CATALOG[0])
    results = contracts.publish(["usage-event"], tmp_path)
    assert [(r.file, r.status) for r in results] == [(usage, "new")]
    assert json.loads((tmp_path / usage).read_text())["x-billstream"]["topic"] == CATALOG[0].topic
    assert [r.status for r in contracts.publish(["usage-event"], tmp_path)] == ["unchanged"]

    snapshot = json.loads((tmp_path / usage).read_text())
    snapshot["properties"]["legacy"] = {"type": "string"}  # the catalog no longer has it
    (tmp_path / usage).write_text(json.dumps(snapshot))
    with pytest.raises(ValueError, match="legacy: field removed"):
        contracts.publish([], tmp_path)
    assert json.loads((tmp_path / usage).read_text()) == snapshot  # nothing overwritten
    with pytest.raises(ValueError, match="not in the catalog: nope"):
        contracts.publish(["nope"], tmp_path)
