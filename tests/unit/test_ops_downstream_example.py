"""docs/examples/receivables.py, the documented downstream consumer, works from the exported
JSON Schemas alone: events billstream publishes validate and project correctly."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest

from schemas.catalog import export
from schemas.invoicing import InvoiceCreated, InvoiceData, InvoicePaid

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "receivables.py"


@pytest.fixture
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("receivables_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def invoice(
    invoice_id: str, total: int, paid: int, status: str, number: str | None = "INV-1"
) -> InvoiceData:
    return InvoiceData(
        invoice_id=invoice_id,
        number=number,
        status=status,  # type: ignore[arg-type]
        customer="cust-1",
        subscription_id="sub-1",
        currency="EUR",
        period_start=datetime(2026, 10, 1, tzinfo=UTC),
        period_end=datetime(2026, 11, 1, tzinfo=UTC),
        subtotal=total,
        tax=0,
        total=total,
        amount_paid=paid,
        amount_due=total - paid,
        tax_rate=Decimal("0") if number is not None else None,
        due_at=datetime(2020, 1, 1, tzinfo=UTC),
        lines=[],
    )


def test_the_receivables_projection_from_exported_schemas(
    example: ModuleType, tmp_path: Path
) -> None:
    export(tmp_path)
    contracts = example.Contracts(tmp_path)
    projection = example.Projection(sqlite3.connect(":memory:"))
    common = {"source": "billstream/invoicing", "tenantid": "acme"}
    a = InvoiceCreated(data=invoice("inv-a", 1200, 0, "draft"), **common).to_json()
    b = InvoiceCreated(data=invoice("inv-b", 800, 0, "draft"), **common).to_json()
    paid = InvoicePaid(data=invoice("inv-a", 1200, 1200, "paid"), **common).to_json()

    assert [example.handle(contracts, projection, v) for v in (a, b, a, paid, paid)] == [
        "applied",
        "applied",
        "duplicate",
        "applied",
        "duplicate",
    ]
    [row] = projection.receivables()
    assert (row["expected"], row["received"], row["outstanding"], row["overdue"]) == (
        2000,
        1200,
        800,
        800,
    )

    broken = json.loads(b)
    del broken["data"]["total"]
    outcome = example.handle(contracts, projection, json.dumps(broken).encode())
    assert outcome.startswith("invalid:") and "'total' is a required property" in outcome
    other = {**json.loads(b), "type": "invoice.voided"}
    assert example.handle(contracts, projection, json.dumps(other).encode()) == "ignored"


def test_a_draft_invoice_with_null_fields_validates_against_its_exported_schema(
    example: ModuleType, tmp_path: Path
) -> None:
    export(tmp_path)
    contracts = example.Contracts(tmp_path)
    draft = InvoiceCreated(
        data=invoice("inv-a", 1200, 0, "draft", number=None),
        source="billstream/invoicing",
        tenantid="acme",
    )
    assert contracts.errors(json.loads(draft.to_json())) == []
