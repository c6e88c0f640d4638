"""POS's command table and receipts handler, run in memory (``MemoryTx`` with a fake
mapping repository): what they store, emit, dead-letter and answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from schemas import topics
from schemas.pos import (
    PosLine,
    PosMappingData,
    PosMappingSpec,
    PosReceiptData,
    PosReceiptRecorded,
    SetPosMapping,
)
from storage.pos import PosMappingRepository
from workers.pos import handlers
from workers.pos.commands import COMMANDS
from workers.runtime.memory import MemoryTx, message

T = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)


class FakeMappings:
    """``PosMappingRepository`` in memory: mappings (JSON objects) by (tenant, source)."""

    def __init__(self) -> None:
        self.mappings: dict[tuple[str, str], dict[str, Any]] = {}
        self.commands: dict[tuple[str, str], str] = {}

    async def put(self, tenant_id: str, source: str, spec: dict[str, Any], command_id: str) -> None:
        self.mappings[(tenant_id, source)] = spec
        self.commands[(tenant_id, source)] = command_id

    async def for_sources(
        self, keys: set[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        return {k: v for k, v in self.mappings.items() if k in keys}


def set_mapping(**spec: Any) -> SetPosMapping:
    return SetPosMapping(
        source="tests",
        tenantid="acme",
        subject="generic",
        data=PosMappingData.model_validate({**spec, "source": "generic"}),
    )


def receipt(
    id: str, location: str, total: int, tax: int, kind: Literal["sale", "refund"] = "sale"
) -> PosReceiptRecorded:
    line = PosLine(sku="COFFEE", quantity=1, unit_price=total, tax=tax, total=total)
    data = PosReceiptData(
        receipt_id=id,
        kind=kind,
        location=location,
        time=T,
        currency="EUR",
        payment_method="card",
        lines=[line],
        tax=tax,
        total=total,
        source="generic",
    )
    return PosReceiptRecorded(
        id=id, source="billstream/pos/generic", subject=location, time=T, tenantid="acme", data=data
    )


def mapped(spec: PosMappingSpec) -> FakeMappings:
    fake = FakeMappings()
    fake.mappings[("acme", "generic")] = spec.model_dump(mode="json")
    return fake


async def test_set_mapping_stores_the_spec_without_its_source_and_answers_the_source() -> None:
    fake = FakeMappings()
    tx = MemoryTx({PosMappingRepository: fake})
    command = set_mapping(default_subject="shop-42", subjects_by_location={"airport": "shop-77"})
    await handlers.on_command([message(command)], tx)
    [(kind, outcome)] = tx.outcomes
    assert (kind, outcome.status, outcome.result) == (
        "SetPosMapping",
        "succeeded",
        {"source": "generic"},
    )
    stored = fake.mappings[("acme", "generic")]
    assert "source" not in stored
    assert PosMappingSpec.model_validate(stored) == PosMappingSpec(
        default_subject="shop-42", subjects_by_location={"airport": "shop-77"}
    )
    assert fake.commands[("acme", "generic")] == command.id
    assert tx.events == []  # a mapping is state, not an event


async def test_the_command_table_replaces_a_mapping() -> None:
    fake = mapped(PosMappingSpec(default_subject="old"))
    tx = MemoryTx({PosMappingRepository: fake})
    assert await COMMANDS[SetPosMapping](set_mapping(default_subject="new"), tx) == {
        "source": "generic"
    }
    assert fake.mappings[("acme", "generic")]["default_subject"] == "new"


async def test_receipts_become_usage_events_keyed_by_tenant_and_subject() -> None:
    tx = MemoryTx({PosMappingRepository: mapped(PosMappingSpec(default_subject="shop-42"))})
    sale = receipt("R-1", "berlin", total=700, tax=112)
    refund = receipt("R-2", "berlin", total=300, tax=48, kind="refund")
    await handlers.on_receipts([message(sale), message(refund, offset=1)], tx)
    assert [(e["id"], e["type"], e["subject"]) for e in tx.events] == [
        ("R-1/gross_sales", "pos.gross_sales", "shop-42"),
        ("R-1/transaction", "pos.transaction", "shop-42"),
        ("R-2/gross_sales", "pos.gross_sales", "shop-42"),  # refunds count no transaction
    ]
    gross = [e["data"] for e in tx.events if e["type"] == "pos.gross_sales"]
    assert [(g["amount"], g["net_amount"], g["tax"]) for g in gross] == [
        (700, 588, 112),  # 700 - 112
        (-300, -252, -48),  # a refund subtracts: -(300 - 48)
    ]
    assert {(m.topic, m.key) for m in tx.outgoing} == {(topics.USAGE, b"acme:shop-42")}
    assert all(e["causationid"] in {"R-1", "R-2"} for e in tx.events)


async def test_a_receipt_without_a_mapping_or_a_subject_is_dead_lettered_with_the_reason() -> None:
    tx = MemoryTx({PosMappingRepository: FakeMappings()})
    await handlers.on_receipts([message(receipt("R-1", "berlin", 700, 112))], tx)
    [(_, headers)] = tx.dead_letters
    assert headers["billstream-dlq-error"] == "no_pos_mapping"
    assert headers["billstream-dlq-reason"] == (
        "no mapping for POS source 'generic': PUT /v1/integrations/pos/generic/mapping, "
        "then redrive"
    )
    assert tx.events == []

    only_airport = PosMappingSpec(subjects_by_location={"airport": "shop-77"})
    tx = MemoryTx({PosMappingRepository: mapped(only_airport)})
    await handlers.on_receipts([message(receipt("R-1", "berlin", 700, 112))], tx)
    [(_, headers)] = tx.dead_letters
    assert headers["billstream-dlq-error"] == "unmapped_location"
    assert tx.events == [] and tx.rejected == 1
