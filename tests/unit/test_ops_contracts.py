"""AsyncAPI documents per worker and the ``schemas`` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from schemas import topics
from workers.cli import app
from workers.ops.asyncapi import document
from workers.processes import WORKERS
from workers.settings import Settings


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def operations(doc: dict[str, Any]) -> dict[str, list[str]]:
    """The actions on each topic, every message's payload checked to resolve."""
    by_address: dict[str, list[str]] = {}
    for name, op in doc["operations"].items():
        channel = resolve(doc, op["channel"]["$ref"])
        by_address.setdefault(channel["address"], []).append(op["action"])
        for ref in op["messages"]:
            message = resolve(doc, resolve(doc, ref["$ref"])["$ref"])
            payload = message["payload"]
            for r in payload.get("oneOf", [payload]):
                if "$ref" in r:  # every referenced schema is in the document
                    assert resolve(doc, r["$ref"])["type"] == "object", name
    return by_address


async def test_the_metering_document_has_typed_channels_for_what_it_reads_and_writes() -> None:
    doc = await document("metering", Settings())
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["title"] == "billstream metering worker"
    by_address = operations(doc)
    assert by_address[topics.USAGE] == ["receive"]
    assert by_address[topics.COMMANDS_METERING] == ["receive"]
    assert by_address[topics.EVENTS_METERING] == ["send"]
    assert by_address[topics.dlq(topics.USAGE)] == ["send"]
    assert topics.INTEGRATIONS_POS not in by_address  # the POS worker's
    schemas = doc["components"]["schemas"]
    assert {"UsageEvent", "CreateMeter", "MeterCreated"} <= set(schemas)
    assert "EmptyPayload" not in schemas


async def test_the_pos_document_reads_receipts_and_writes_usage() -> None:
    doc = await document("pos", Settings())
    by_address = operations(doc)
    assert by_address[topics.INTEGRATIONS_POS] == ["receive"]
    assert by_address[topics.COMMANDS_POS] == ["receive"]
    assert by_address[topics.USAGE] == ["send"]  # receipts become usage events
    assert by_address[topics.dlq(topics.INTEGRATIONS_POS)] == ["send"]
    assert {"PosReceiptRecorded", "SetPosMapping", "UsageEvent"} <= set(
        doc["components"]["schemas"]
    )


@pytest.mark.parametrize("worker", WORKERS)
async def test_every_worker_has_a_document(worker: str) -> None:
    doc = await document(worker, Settings())
    assert doc["operations"], f"{worker} declares no operation"
    json.dumps(doc)  # serialisable


def test_schemas_export_writes_json_schemas_and_asyncapi_documents(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["schemas", "export", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "billstream.events.ops.v1/ops.replayed.v1.schema.json").exists()
    for worker in WORKERS:
        doc = json.loads((tmp_path / "asyncapi" / f"{worker}.asyncapi.json").read_text())
        assert doc["asyncapi"] == "3.0.0"


def test_schemas_check_reports_each_message_and_passes() -> None:
    check = CliRunner().invoke(app, ["schemas", "check"])
    assert check.exit_code == 0, check.output
    assert "unchanged    billstream.usage.v1/usage-event.v1.schema.json" in check.output
