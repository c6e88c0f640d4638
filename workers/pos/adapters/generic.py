"""billstream's generic JSON receipt format.

```json
{"receipts": [{
  "id": "R-1001", "type": "sale", "location": "store-berlin-1",
  "time": "2026-11-22T10:15:00+01:00", "currency": "EUR", "payment_method": "card",
  "lines": [{"sku": "COFFEE", "quantity": 2, "unit_price": "3.50",
             "tax": "1.12", "total": "7.00"}],
  "total": "7.00"
}]}
```

Money is in major units, as JSON numbers or strings (``"7.00"``), and must be exact in the
currency's minor unit. ``type`` is ``sale`` (default) or ``refund`` (amounts positive;
``refund_of`` may name the sale). ``tax`` and ``total`` of the receipt are optional and, when
given, must equal the sums of the lines. A body may also be a bare JSON array of receipts.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from schemas.currency import exponent
from schemas.pos import PosReceipt
from workers.pos.adapters._money import to_minor
from workers.pos.errors import AdapterError

NAME = "generic"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Line(_Model):
    sku: str
    description: str | None = None
    quantity: Decimal
    unit_price: Decimal
    tax: Decimal = Decimal(0)
    total: Decimal


class Receipt(_Model):
    id: str
    type: Literal["sale", "refund"] = "sale"
    refund_of: str | None = None
    location: str
    time: AwareDatetime
    currency: str
    payment_method: str
    lines: list[Line] = Field(min_length=1)
    tax: Decimal | None = None
    total: Decimal | None = None


_receipts: TypeAdapter[list[Receipt]] = TypeAdapter(list[Receipt])


def _where(loc: tuple[str | int, ...]) -> str:
    path = "receipts"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse(payload: Any) -> list[PosReceipt]:
    raw = payload.get("receipts") if isinstance(payload, dict) else payload
    if not isinstance(raw, list):
        raise AdapterError(
            'send {"receipts": [...]} or a JSON array of receipts',
            [{"field": "receipts", "reason": "expected a list of receipts"}],
        )
    try:
        receipts = _receipts.validate_python(raw)
    except ValidationError as e:
        invalid = [{"field": _where(err["loc"]), "reason": err["msg"]} for err in e.errors()]
        raise AdapterError(f"{len(invalid)} invalid field(s)", invalid[:100]) from None
    out: list[PosReceipt] = []
    errors: list[dict[str, Any]] = []
    for i, r in enumerate(receipts):
        try:
            out.append(_normalise(r, i))
        except _FieldError as e:
            errors.append({"field": e.field, "reason": e.reason})
    if errors:
        raise AdapterError(f"{len(errors)} invalid receipt(s)", errors[:100])
    return out


class _FieldError(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _minor(amount: Decimal, currency: str, field: str) -> int:
    try:
        return to_minor(amount, currency)
    except ValueError as e:
        raise _FieldError(field, str(e)) from None


def _normalise(r: Receipt, i: int) -> PosReceipt:
    at = f"receipts[{i}]"
    try:
        to_minor(Decimal(0), r.currency)
    except ValueError as e:
        raise _FieldError(f"{at}.currency", str(e)) from None
    lines: list[dict[str, Any]] = []
    for j, line in enumerate(r.lines):
        where = f"{at}.lines[{j}]"
        lines.append(
            {
                "sku": line.sku,
                "description": line.description,
                "quantity": line.quantity,
                "unit_price": line.unit_price,
                "tax": _minor(line.tax, r.currency, f"{where}.tax"),
                "total": _minor(line.total, r.currency, f"{where}.total"),
            }
        )
    lines_total = sum(int(line["total"]) for line in lines)
    lines_tax = sum(int(line["tax"]) for line in lines)
    total = _minor(r.total, r.currency, f"{at}.total") if r.total is not None else lines_total
    tax = _minor(r.tax, r.currency, f"{at}.tax") if r.tax is not None else lines_tax
    digits = exponent(r.currency)
    for name, given, summed in (("total", total, lines_total), ("tax", tax, lines_tax)):
        if given != summed:
            raise _FieldError(
                f"{at}.{name}",
                f"{Decimal(given).scaleb(-digits)} is not the sum of the lines' {name} "
                f"({Decimal(summed).scaleb(-digits)})",
            )
    try:
        return PosReceipt.model_validate(
            {
                "receipt_id": r.id,
                "kind": r.type,
                "refund_of": r.refund_of,
                "location": r.location,
                "time": r.time,
                "currency": r.currency,
                "payment_method": r.payment_method,
                "lines": lines,
                "tax": tax,
                "total": total,
            }
        )
    except ValidationError as e:
        err = e.errors()[0]
        names = {"receipt_id": "id", "kind": "type"}
        loc = [names.get(str(p), p) if k == 0 else p for k, p in enumerate(err["loc"])]
        field = at + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        raise _FieldError(field, err["msg"].removeprefix("Value error, ")) from None
