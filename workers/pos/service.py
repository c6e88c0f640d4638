"""POS receipts to usage events. Pure: no I/O; unit-tested directly."""

from __future__ import annotations

from typing import Any

from schemas.pos import PosMappingSpec, PosReceiptRecorded, SetPosMapping
from schemas.usage import UsageEvent
from workers.pos.errors import UnmappedLocation

GROSS_SALES = "gross_sales"
TRANSACTION = "transaction"


def usage_source(pos_source: str) -> str:
    return f"billstream/pos/{pos_source}"


def mapping_of(command: SetPosMapping) -> PosMappingSpec:
    """The mapping a ``SetPosMapping`` command sets (its data without the source)."""
    return PosMappingSpec.model_validate(command.data.model_dump(exclude={"source"}))


def no_mapping(source: str) -> str:
    """Why a receipt of ``source`` is dead-lettered when its tenant has no mapping for it."""
    return (
        f"no mapping for POS source {source!r}: PUT "
        f"/v1/integrations/pos/{source}/mapping, then redrive"
    )


def subject_for(mapping: PosMappingSpec, location: str) -> str:
    subject = mapping.subjects_by_location.get(location, mapping.default_subject)
    if subject is None:
        raise UnmappedLocation(
            f"location {location!r} is not in the mapping's subjects_by_location and it has "
            "no default_subject; update the mapping, then redrive",
            field="subjects_by_location",
        )
    return subject


def usage_events(message: PosReceiptRecorded, mapping: PosMappingSpec) -> list[UsageEvent]:
    """The usage events of one receipt. Their ids derive from (receipt id, kind), and their
    source from the POS source, so a receipt processed twice yields the same events (and
    metering counts them once)."""
    r = message.data
    sign = -1 if r.kind == "refund" else 1
    subject = subject_for(mapping, r.location)
    common: dict[str, Any] = {
        "currency": r.currency,
        "location": r.location,
        "payment_method": r.payment_method,
        "receipt_id": r.receipt_id,
        "kind": r.kind,
    }
    envelope = {
        "source": usage_source(r.source),
        "subject": subject,
        "time": r.time,
        **message.caused(),
    }
    events: list[UsageEvent] = []
    if mapping.emit_gross_sales:
        events.append(
            UsageEvent(
                id=f"{r.receipt_id}/{GROSS_SALES}",
                type=mapping.gross_sales_event_type,
                data={
                    "amount": sign * r.total,
                    "net_amount": sign * (r.total - r.tax),
                    "tax": sign * r.tax,
                    **common,
                },
                **envelope,
            )
        )
    if mapping.emit_transactions and (r.kind == "sale" or mapping.count_refunds):
        events.append(
            UsageEvent(
                id=f"{r.receipt_id}/{TRANSACTION}",
                type=mapping.transaction_event_type,
                data=dict(common),
                **envelope,
            )
        )
    return events
