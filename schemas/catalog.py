"""Every message billstream defines, by topic: the source for schema export and docs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from schemas import (
    alerts,
    documents,
    entitlements,
    invoicing,
    metering,
    ops,
    partners,
    payments,
    pos,
    receipts,
    topics,
    webhooks,
)
from schemas.bounds import PublishedJsonSchema
from schemas.usage import UsageEvent


@dataclass(frozen=True)
class MessageSpec:
    topic: str
    kind: str  # "command" | "event" | "usage"
    ce_type: str  # the CloudEvents type ("*" for producer-defined usage types)
    model: type[BaseModel]
    dataversion: str = "1"


def _type_of(model: type[BaseModel]) -> str:
    default = model.model_fields["type"].default
    assert isinstance(default, str), f"{model.__name__} has no literal type"
    return default


CATALOG: tuple[MessageSpec, ...] = (
    MessageSpec(topics.USAGE, "usage", "*", UsageEvent),
    *(MessageSpec(topics.COMMANDS_METERING, "command", _type_of(m), m) for m in metering.COMMANDS),
    *(MessageSpec(topics.EVENTS_METERING, "event", _type_of(m), m) for m in metering.EVENTS),
    *(
        MessageSpec(topics.COMMANDS_INVOICING, "command", _type_of(m), m)
        for m in invoicing.COMMANDS
    ),
    *(MessageSpec(topics.EVENTS_INVOICING, "event", _type_of(m), m) for m in invoicing.EVENTS),
    *(MessageSpec(topics.COMMANDS_PAYMENTS, "command", _type_of(m), m) for m in payments.COMMANDS),
    *(MessageSpec(topics.EVENTS_PAYMENTS, "event", _type_of(m), m) for m in payments.EVENTS),
    *(
        MessageSpec(topics.INTEGRATIONS_STRIPE, "event", _type_of(m), m)
        for m in payments.INTEGRATION_EVENTS
    ),
    *(MessageSpec(topics.INTEGRATIONS_POS, "event", _type_of(m), m) for m in pos.EVENTS),
    *(MessageSpec(topics.COMMANDS_POS, "command", _type_of(m), m) for m in pos.COMMANDS),
    *(MessageSpec(topics.EVENTS_OPS, "event", _type_of(m), m) for m in ops.EVENTS),
    *(MessageSpec(topics.COMMANDS_WEBHOOKS, "command", _type_of(m), m) for m in webhooks.COMMANDS),
    *(MessageSpec(topics.EVENTS_WEBHOOKS, "event", _type_of(m), m) for m in webhooks.EVENTS),
    *(MessageSpec(topics.COMMANDS_ALERTS, "command", _type_of(m), m) for m in alerts.COMMANDS),
    *(MessageSpec(topics.EVENTS_ALERTS, "event", _type_of(m), m) for m in alerts.EVENTS),
    *(MessageSpec(topics.COMMANDS_RECEIPTS, "command", _type_of(m), m) for m in receipts.COMMANDS),
    *(MessageSpec(topics.EVENTS_RECEIPTS, "event", _type_of(m), m) for m in receipts.EVENTS),
    *(
        MessageSpec(topics.COMMANDS_ENTITLEMENTS, "command", _type_of(m), m)
        for m in entitlements.COMMANDS
    ),
    *(
        MessageSpec(topics.EVENTS_ENTITLEMENTS, "event", _type_of(m), m)
        for m in entitlements.EVENTS
    ),
    *(
        MessageSpec(topics.COMMANDS_DOCUMENTS, "command", _type_of(m), m)
        for m in documents.COMMANDS
    ),
    *(MessageSpec(topics.EVENTS_DOCUMENTS, "event", _type_of(m), m) for m in documents.EVENTS),
    *(MessageSpec(topics.COMMANDS_PARTNERS, "command", _type_of(m), m) for m in partners.COMMANDS),
    *(MessageSpec(topics.EVENTS_PARTNERS, "event", _type_of(m), m) for m in partners.EVENTS),
)


def schema_file_name(spec: MessageSpec) -> str:
    name = "usage-event" if spec.ce_type == "*" else spec.ce_type
    return f"{spec.topic}/{name}.v{spec.dataversion}.schema.json"


def export(directory: Path) -> list[Path]:
    """Write one JSON Schema (draft 2020-12) per message; return the files written."""
    written: list[Path] = []
    for spec in CATALOG:
        # bounds added since a message was published are enforced, not shown (ADR 0043)
        schema = spec.model.model_json_schema(
            mode="validation", schema_generator=PublishedJsonSchema
        )
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["x-billstream"] = {
            "topic": spec.topic,
            "kind": spec.kind,
            "type": spec.ce_type,
            "dataversion": spec.dataversion,
        }
        path = directory / schema_file_name(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
