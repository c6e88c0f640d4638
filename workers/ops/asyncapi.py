"""An AsyncAPI 3.0 document per worker, for Kafka-native producers and consumers.

FastStream generates the document from the worker's broker (its subscribers: channels,
consumer groups, descriptions). The runtime's subscribers take raw record batches, so
their payloads are then filled in from the message catalog, and the topics the worker
publishes to (its events through the outbox, its dead-letter topics) are added as
``send`` operations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from faststream.specification import AsyncAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas import topics
from schemas.catalog import CATALOG
from workers import processes
from workers.settings import Settings

VERSION = "0.1.0"

# Topics a worker publishes to besides ``billstream.events.<worker>.v1`` and the dead-letter
# topics of what it reads: the POS worker turns receipts into usage events.
EXTRA_SENDS: dict[str, tuple[str, ...]] = {"pos": (topics.USAGE,)}


def _models(topic: str) -> list[type[BaseModel]]:
    return [spec.model for spec in CATALOG if spec.topic == topic]


def _payload(models: list[type[BaseModel]]) -> dict[str, Any]:
    if not models:
        return {
            "description": "A copy of the failed record (same key, value and headers) plus "
            "billstream-dlq-* headers saying why"
        }
    refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in models]
    return refs[0] if len(refs) == 1 else {"oneOf": refs}


async def document(name: str, settings: Settings) -> dict[str, Any]:
    worker = processes.build(name, settings)
    try:
        spec = AsyncAPI(
            worker.broker,
            title=f"billstream {name} worker",
            version=VERSION,
            description=(
                f"What the billstream {name} worker reads and writes. Every message is a "
                "CloudEvents 1.0 JSON object (structured mode); payload schemas are the ones "
                "`billstream schemas export` writes."
            ),
            schema_version="3.0.0",
        ).to_specification()
        doc: dict[str, Any] = json.loads(spec.to_json())
        consumed = [
            (p.consumer.group, t) for p in worker.runtime.processors for t in p.consumer.topics
        ]
    finally:
        await worker.engine.dispose()

    sends: list[str] = []
    own_events = f"billstream.events.{name}.v1"
    if any(t.name == own_events for t in topics.TOPICS):
        sends.append(own_events)
    sends += EXTRA_SENDS.get(name, ())
    sends += [topics.dlq(t) for _, t in consumed if not t.endswith(topics.DLQ_SUFFIX)]
    sends = list(dict.fromkeys(sends))

    models = {m for _, topic in consumed for m in _models(topic)}
    models |= {m for topic in sends for m in _models(topic)}
    ordered = sorted(models, key=lambda m: m.__name__)
    _, defs = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}"
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(defs.get("$defs", {}))
    schemas.pop("EmptyPayload", None)
    messages = components.setdefault("messages", {})

    for channel in doc.get("channels", {}).values():
        address = channel.get("address")
        for ref in channel.get("messages", {}).values():
            message_name = ref["$ref"].rsplit("/", 1)[-1]
            message = messages.get(message_name)
            if message is not None and address is not None:
                message["payload"] = _payload(_models(address))
                message["contentType"] = "application/json"
                message.pop("correlationId", None)

    servers = list(doc.get("servers", {}))
    for topic in sends:
        key = f"{topic}.send"  # component keys allow letters, digits, ".", "-", "_"
        message_key = f"{key}.Message"
        messages[message_key] = {
            "title": message_key,
            "contentType": "application/json",
            "payload": _payload(_models(topic)),
        }
        doc.setdefault("channels", {})[key] = {
            "address": topic,
            "servers": [{"$ref": f"#/servers/{s}"} for s in servers],
            "messages": {"Message": {"$ref": f"#/components/messages/{message_key}"}},
            "bindings": {"kafka": {"topic": topic, "bindingVersion": "0.4.0"}},
        }
        doc.setdefault("operations", {})[key] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/Message"}],
        }
    return doc


async def export(names: list[str], settings: Settings, directory: Path) -> list[Path]:
    """Write ``asyncapi/<worker>.asyncapi.json`` for each worker."""
    out = directory / "asyncapi"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in names:
        path = out / f"{name}.asyncapi.json"
        doc = await document(name, settings)
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
