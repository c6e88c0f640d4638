"""POS: the generic adapter (exact money, refunds, located errors), the adapter registry,
and the mapping from receipts to usage events."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from schemas.pos import PosMappingSpec, PosReceiptData, PosReceiptRecorded
from workers.pos import adapters, service
from workers.pos.adapters._money import to_minor
from workers.pos.errors import AdapterError, UnmappedLocation


def raw(**over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "id": "R-1",
        "location": "berlin",
        "time": "2026-11-22T10:15:00+01:00",
        "currency": "EUR",
        "payment_method": "card",
        "lines": [
            {
                "sku": "TEA",
                "quantity": Decimal(2),
                "unit_price": "2.50",
                "tax": "0.80",
                "total": "5.00",
            },
            {
                "sku": "CAKE",
                "quantity": "1",
                "unit_price": Decimal("3.10"),
                "tax": Decimal("0.5"),  # JSON numbers arrive as exact Decimals
                "total": Decimal("3.1"),
            },
        ],
    }
    r.update(over)
    return r


def parse(*receipts: dict[str, Any]) -> list[Any]:
    adapter = adapters.get("generic")
    assert adapter is not None
    return adapter.parse({"receipts": list(receipts)})


def test_money_converts_to_minor_units_exactly_or_not_at_all() -> None:
    assert to_minor(Decimal("12.34"), "EUR") == 1234
    assert to_minor(Decimal("500"), "JPY") == 500
    assert to_minor(Decimal("1.234"), "BHD") == 1234
    assert to_minor(Decimal("-0.50"), "USD") == -50
    with pytest.raises(ValueError, match="more decimal places than JPY allows \\(0\\)"):
        to_minor(Decimal("1.5"), "JPY")
    with pytest.raises(ValueError, match="unknown ISO 4217"):
        to_minor(Decimal(1), "EURO")


def test_the_generic_format_normalises_receipts() -> None:
    [r] = parse(raw())
    assert (r.receipt_id, r.kind, r.currency, r.total, r.tax) == ("R-1", "sale", "EUR", 810, 130)
    assert r.time == datetime(2026, 11, 22, 9, 15, tzinfo=UTC)
    assert [(line.sku, line.unit_price, line.total) for line in r.lines] == [
        ("TEA", Decimal("2.50"), 500),
        ("CAKE", Decimal("3.10"), 310),
    ]
    [refund] = parse(raw(id="R-2", type="refund", refund_of="R-1", total="8.10", tax="1.30"))
    assert (refund.kind, refund.refund_of, refund.total) == ("refund", "R-1", 810)
    assert parse(*[raw(id=f"R-{i}") for i in range(3)])[2].receipt_id == "R-2"


@pytest.mark.parametrize(
    ("receipt", "field", "reason"),
    [
        (raw(total="9.00"), "receipts[0].total", "is not the sum of the lines' total (8.10)"),
        (raw(currency="XAU"), "receipts[0].currency", "has no minor unit"),
        (raw(time="2026-11-22T10:15:00"), "receipts[0].time", "timezone"),
        (raw(lines=[]), "receipts[0].lines", "at least 1 item"),
        (raw(type="void"), "receipts[0].type", "'sale' or 'refund'"),
        (raw(extra=1), "receipts[0].extra", "Extra inputs"),
        (raw(id="has space"), "receipts[0].id", "should match pattern"),
        (raw(refund_of="R-0"), "receipts[0]", "refund_of is only for refunds"),
    ],
)
def test_invalid_receipts_are_refused_naming_the_field(
    receipt: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(AdapterError) as e:
        parse(receipt)
    [error] = [err for err in e.value.errors if err["field"] == field]
    assert reason in error["reason"]


def test_a_body_is_receipts_or_a_list() -> None:
    adapter = adapters.get("generic")
    assert adapter is not None
    assert len(adapter.parse([raw()])) == 1
    with pytest.raises(AdapterError):
        adapter.parse({"items": []})


def test_adapters_are_discovered_by_module() -> None:
    assert set(adapters.adapters()) >= {"generic"}
    assert adapters.get("nope") is None
    assert "generic JSON" in adapters.adapters()["generic"].description


# --- receipts to usage -----------------------------------------------------------------------


def recorded(kind: str = "sale", location: str = "berlin") -> PosReceiptRecorded:
    [r] = parse(raw(type=kind, location=location))
    return PosReceiptRecorded(
        id=r.receipt_id,
        source=service.usage_source("generic"),
        subject=r.location,
        time=r.time,
        tenantid="acme",
        data=PosReceiptData.model_validate({**r.model_dump(), "source": "generic"}),
    )


MAPPING = PosMappingSpec(default_subject="shop-1", subjects_by_location={"airport": "shop-2"})


def test_a_sale_becomes_gross_sales_and_a_transaction() -> None:
    sale = recorded()
    gross, tx = service.usage_events(sale, MAPPING)
    assert (gross.id, gross.type, gross.subject, gross.source) == (
        "R-1/gross_sales",
        "pos.gross_sales",
        "shop-1",
        "billstream/pos/generic",
    )
    assert gross.data == {
        "amount": 810,
        "net_amount": 680,
        "tax": 130,
        "currency": "EUR",
        "location": "berlin",
        "payment_method": "card",
        "receipt_id": "R-1",
        "kind": "sale",
    }
    assert gross.time == sale.data.time and gross.causationid == sale.id
    assert (tx.id, tx.type) == ("R-1/transaction", "pos.transaction")
    # deterministic: processing the receipt again yields the same identities
    assert [e.id for e in service.usage_events(sale, MAPPING)] == [gross.id, tx.id]


def test_a_refund_reduces_gross_sales_and_counts_as_a_transaction_only_if_asked() -> None:
    [gross] = service.usage_events(recorded("refund"), MAPPING)
    assert (gross.data["amount"], gross.data["net_amount"], gross.data["tax"]) == (-810, -680, -130)
    counting = MAPPING.model_copy(update={"count_refunds": True})
    assert [e.type for e in service.usage_events(recorded("refund"), counting)] == [
        "pos.gross_sales",
        "pos.transaction",
    ]


def test_locations_map_to_subjects_and_an_unmapped_one_is_refused() -> None:
    [gross, _] = service.usage_events(recorded(location="airport"), MAPPING)
    assert gross.subject == "shop-2"
    only_listed = PosMappingSpec(
        subjects_by_location={"airport": "shop-2"}, emit_transactions=False
    )
    with pytest.raises(UnmappedLocation, match="'berlin'"):
        service.usage_events(recorded(), only_listed)
    assert [e.type for e in service.usage_events(recorded(location="airport"), only_listed)] == [
        "pos.gross_sales"
    ]


def test_a_mapping_needs_a_subject_and_something_to_emit() -> None:
    with pytest.raises(ValueError, match="default_subject or subjects_by_location"):
        PosMappingSpec()
    with pytest.raises(ValueError, match="emit_gross_sales or emit_transactions"):
        PosMappingSpec(default_subject="s", emit_gross_sales=False, emit_transactions=False)
