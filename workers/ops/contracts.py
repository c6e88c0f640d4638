"""Published message contracts: the committed snapshot of every published JSON Schema
(``schemas/published/<topic>/<type>.v<dataversion>.schema.json``) and the check that the
catalog still honours it.

- ``billstream schemas check`` compares every catalog message with its published snapshot:
  unchanged, compatible (e.g. a new optional field), incompatible (exit 1), or new (not
  published yet: reported, never a failure).
- ``billstream schemas publish [TYPE...]`` writes the snapshots of the catalog (all, or
  the types named), refusing incompatible changes: a breaking change needs a new
  ``dataversion``, which is a new snapshot file next to the old one.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import schemas
from schemas.catalog import CATALOG, MessageSpec, export, schema_file_name
from workers.ops.compat import Break, compare

PUBLISHED = Path(schemas.__file__).parent / "published"

Status = Literal["unchanged", "compatible", "incompatible", "new", "superseded", "removed"]


def current() -> dict[str, dict[str, Any]]:
    """Every catalog message's JSON Schema, by snapshot file name, exactly as
    ``billstream schemas export`` writes it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        export(out)
        return {
            schema_file_name(spec): json.loads((out / schema_file_name(spec)).read_text())
            for spec in CATALOG
        }


def published(directory: Path = PUBLISHED) -> dict[str, dict[str, Any]]:
    if not directory.is_dir():
        return {}
    return {
        path.relative_to(directory).as_posix(): json.loads(path.read_text())
        for path in sorted(directory.rglob("*.schema.json"))
    }


@dataclass(frozen=True)
class SchemaCheck:
    file: str
    status: Status
    breaks: list[Break] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status in ("incompatible", "removed")

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "status": self.status, "breaks": [str(b) for b in self.breaks]}


def _type_key(file: str) -> tuple[str, str, int]:
    """``topic/name.vN.schema.json`` → (topic, name, N)."""
    topic, _, rest = file.rpartition("/")
    stem = rest.removesuffix(".schema.json")
    name, _, version = stem.rpartition(".v")
    return topic, name, int(version) if version.isdigit() else 0


def check(now: dict[str, dict[str, Any]], snapshot: dict[str, dict[str, Any]]) -> list[SchemaCheck]:
    """Compare the catalog's schemas (``now``) with the published ones (``snapshot``)."""
    results: list[SchemaCheck] = []
    for file, schema in now.items():
        old = snapshot.get(file)
        if old is None:
            results.append(SchemaCheck(file, "new"))
        elif old == schema:
            results.append(SchemaCheck(file, "unchanged"))
        else:
            breaks = compare(old, schema)
            results.append(SchemaCheck(file, "incompatible" if breaks else "compatible", breaks))
    versions_now = {_type_key(f)[:2]: _type_key(f)[2] for f in now}
    for file in snapshot:
        if file in now:
            continue
        topic, name, version = _type_key(file)
        newer = versions_now.get((topic, name))
        if newer is not None and newer > version:
            results.append(SchemaCheck(file, "superseded"))
        else:
            results.append(
                SchemaCheck(
                    file,
                    "removed",
                    [
                        Break(
                            "(root)",
                            "message removed",
                            "published, and no longer in the catalog (nor a newer dataversion)",
                        )
                    ],
                )
            )
    return sorted(results, key=lambda r: r.file)


def check_catalog(directory: Path = PUBLISHED) -> list[SchemaCheck]:
    return check(current(), published(directory))


def select(specs: Sequence[MessageSpec], names: Sequence[str]) -> list[MessageSpec]:
    """The catalog messages named by CloudEvents type (``meter.created``), by topic, or by
    snapshot file name; all when ``names`` is empty."""
    if not names:
        return list(specs)
    wanted = set(names)
    chosen = [
        s
        for s in specs
        if s.ce_type in wanted or s.topic in wanted or schema_file_name(s) in wanted
        or (s.ce_type == "*" and "usage-event" in wanted)
    ]  # fmt: skip
    matched = {s.ce_type for s in chosen} | {s.topic for s in chosen}
    matched |= {schema_file_name(s) for s in chosen}
    if any(s.ce_type == "*" for s in chosen):
        matched.add("usage-event")
    unknown = sorted(wanted - matched)
    if unknown:
        raise ValueError(f"not in the catalog: {', '.join(unknown)}")
    return chosen


def publish(names: Sequence[str] = (), directory: Path = PUBLISHED) -> list[SchemaCheck]:
    """Write the snapshots of the selected catalog messages. Refuses (``ValueError``)
    when one of them changed incompatibly; never deletes a snapshot."""
    chosen = {schema_file_name(s) for s in select(CATALOG, names)}
    now = current()
    results = [r for r in check(now, published(directory)) if r.file in chosen]
    bad = [r for r in results if r.status == "incompatible"]
    if bad:
        details = "; ".join(f"{r.file}: {', '.join(map(str, r.breaks))}" for r in bad)
        raise ValueError(
            f"incompatible changes: {details}. Keep the published shape, or give the "
            "message a new dataversion (a new snapshot beside the old one) with an upcaster"
        )
    for r in results:
        if r.status in ("new", "compatible"):
            path = directory / r.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(now[r.file], indent=2, sort_keys=True) + "\n")
    return results
