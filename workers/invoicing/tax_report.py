"""The tax report, pure (no I/O): documents → rows → totals, CSV and JSON text.

What it lists, for one tenant and a period [from, to):

- every invoice finalized in the period (``finalized_at``): status finalized, paid,
  uncollectible or void (a void invoice was issued, then cancelled: it is listed with its
  status, and its reversal below);
- ``invoice_void``: every invoice voided in the period after it was finalized, dated when it
  was voided, its amounts negated: the period in which an invoice is voided takes its tax
  back, and a period already filed never changes;
- every credit note issued in the period (``issued_at``), issued or void, amounts negated;
- ``credit_note_void``: every credit note voided in the period, amounts as credited
  (positive): it undoes the note in the period it is voided.

One row per document and rate (a document with two rates: two rows; with none: one row,
the rate columns empty, tax 0, its net as the taxable amount). Rows come by date, then
document type (invoice, credit_note, invoice_void, credit_note_void), then id, then the
order of the document's breakdown.

========================  ==================================================================
column                    meaning
========================  ==================================================================
document_type             invoice | credit_note | invoice_void | credit_note_void
number                    the invoice's or the credit note's number
date                      finalized_at | issued_at | voided (ISO 8601, UTC)
status                    the document's status now
invoice_number            a credit note's (and its void's): the invoice it credits
currency                  ISO 4217
buyer_name                the customer as the invoice was finalized (``invoices.buyer``);
                          a credit note's: its invoice's buyer; an invoice finalized before
                          buyers were kept: the customer now
buyer_tax_id              every tax ID, ``type:value``, joined by ``"; "``
buyer_country             the billing address's country
tax_status                taxable | exempt | reverse_charge: the rate's, else the buyer's
rate_name                 the rate's name; ``tax`` for a bare ``tax_rate``
rate_display_name         e.g. ``PPN``, ``VAT``; ``Tax 19 %`` for a bare rate
tax_rate_id               the rate version (empty for a bare rate)
percentage                ``"12"`` is 12 %
inclusive                 true: prices included this tax
taxable_base_factor       ``11/12`` (PPN's DPP), ``1`` for most
rate_country              the rate's country
rate_jurisdiction         the rate's region, if any
taxable_amount(_major)    the net the rate applies to; no rate: the document's net
taxable_base(_major)      taxable_amount x factor, rounded once (the DPP)
tax(_major)               the tax
========================  ==================================================================

Amounts are integers in minor units; each ``*_major`` column is the same amount as an exact
decimal string in major units (``-11900`` EUR is ``"-119.00"``, JPY has no decimals). Signs:
invoice +, credit_note -, invoice_void -, credit_note_void +.

Documents from before tax breakdowns (an empty breakdown but tax): one row ``tax`` at the
invoice's legacy ``tax_rate`` on the net (an invoice's subtotal - discount, a note's
subtotal), so old periods still report.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from schemas.currency import exponent
from schemas.tax_report import DocumentType, TaxReportRow, TaxReportTotal
from schemas.taxes import TaxAmount, TaxStatus
from workers.invoicing.taxes import Rate

Format = Literal["json", "csv"]

#: the order of document types on one instant
RANK: dict[DocumentType, int] = {
    "invoice": 0,
    "credit_note": 1,
    "invoice_void": 2,
    "credit_note_void": 3,
}
SIGN: dict[DocumentType, int] = {
    "invoice": 1,
    "credit_note": -1,
    "invoice_void": -1,
    "credit_note_void": 1,
}
COLUMNS: tuple[str, ...] = tuple(TaxReportRow.model_fields)

#: where a page of documents ends: (date, RANK of the type, id)
Cursor = tuple[datetime, int, str]


@dataclass(frozen=True)
class Document:
    """A document of the report as stored."""

    type: DocumentType
    id: str
    number: str
    date: datetime
    status: str
    invoice_number: str | None
    currency: str
    buyer: Mapping[str, Any]  # schemas.taxes.Buyer as JSON
    breakdown: Sequence[Mapping[str, Any]]  # schemas.taxes.TaxAmount dicts, as credited
    net: int  # an invoice's subtotal - discount, a credit note's subtotal
    tax: int
    legacy_rate: Decimal | None  # the invoice's bare tax_rate ('0.19'), before breakdowns

    @property
    def cursor(self) -> Cursor:
        return (self.date, RANK[self.type], self.id)


def major(amount: int, currency: str) -> str:
    """``amount`` minor units as an exact decimal string in major units."""
    return format(Decimal(amount).scaleb(-exponent(currency)), "f")


def _tax_ids(buyer: Mapping[str, Any]) -> str | None:
    ids = [f"{t['type']}:{t['value']}" for t in buyer.get("tax_ids") or []]
    return "; ".join(ids) or None


def rows(doc: Document) -> list[TaxReportRow]:
    """The rows of one document: one per rate of its breakdown, signed."""
    sign = SIGN[doc.type]
    buyer = doc.buyer
    address = buyer.get("billing_address") or {}
    common: dict[str, Any] = {
        "document_type": doc.type,
        "number": doc.number,
        "date": doc.date,
        "status": doc.status,
        "invoice_number": doc.invoice_number,
        "currency": doc.currency,
        "buyer_name": buyer.get("name"),
        "buyer_tax_id": _tax_ids(buyer),
        "buyer_country": address.get("country"),
    }
    status: TaxStatus = buyer.get("tax_status") or "taxable"

    def row(amounts: tuple[int, int, int], **rate: Any) -> TaxReportRow:
        taxable_amount, taxable_base, tax = (sign * a for a in amounts)
        return TaxReportRow(
            **common,
            **rate,
            taxable_amount=taxable_amount,
            taxable_amount_major=major(taxable_amount, doc.currency),
            taxable_base=taxable_base,
            taxable_base_major=major(taxable_base, doc.currency),
            tax=tax,
            tax_major=major(tax, doc.currency),
        )

    if doc.breakdown:
        out = []
        for entry in doc.breakdown:
            a = TaxAmount.model_validate(entry)
            out.append(
                row(
                    (a.taxable_amount, a.taxable_base, a.tax),
                    tax_status=a.taxability,
                    rate_name=a.name,
                    rate_display_name=a.display_name,
                    tax_rate_id=a.tax_rate_id,
                    percentage=format(a.percentage, "f"),
                    inclusive=a.inclusive,
                    taxable_base_factor=a.taxable_base_factor,
                    rate_country=a.country,
                    rate_jurisdiction=a.jurisdiction,
                )
            )
        return out
    no_rate: dict[str, Any] = {
        "rate_name": None,
        "rate_display_name": None,
        "tax_rate_id": None,
        "percentage": None,
        "inclusive": None,
        "taxable_base_factor": None,
        "rate_country": None,
        "rate_jurisdiction": None,
    }
    if doc.tax == 0:
        return [row((doc.net, doc.net, 0), tax_status=status, **no_rate)]
    # before breakdowns: the legacy bare rate on the whole net
    legacy = no_rate | {"rate_name": "tax", "rate_display_name": "Tax", "inclusive": False}
    if doc.legacy_rate is not None:
        bare = Rate.bare(doc.legacy_rate)
        legacy |= {
            "rate_display_name": bare.display_name,
            "percentage": format(bare.percentage, "f"),
            "taxable_base_factor": "1",
        }
    return [row((doc.net, doc.net, doc.tax), tax_status=status, **legacy)]


def rate_key(row: TaxReportRow) -> str | None:
    """How totals tell rates apart: the version's id, else ``name:percentage``."""
    if row.tax_rate_id is not None:
        return row.tax_rate_id
    if row.rate_name is None:
        return None
    return f"{row.rate_name}:{row.percentage or ''}"


class Totals:
    """The rows added up per currency, rate and tax status, as they stream by."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str | None, str], list[int]] = {}
        self._rates: dict[tuple[str, str | None, str], TaxReportRow] = {}

    def add(self, rows: Iterable[TaxReportRow]) -> None:
        for r in rows:
            key = (r.currency, rate_key(r), r.tax_status)
            sums = self._sums.setdefault(key, [0, 0, 0, 0])
            self._rates.setdefault(key, r)
            sums[0] += 1
            sums[1] += r.taxable_amount
            sums[2] += r.taxable_base
            sums[3] += r.tax

    def result(self) -> list[TaxReportTotal]:
        out = []
        for key in sorted(self._sums, key=lambda k: (k[0], k[1] or "", k[2])):
            currency, rk, _ = key
            n, amount, base, tax = self._sums[key]
            first = self._rates[key]
            out.append(
                TaxReportTotal(
                    currency=currency,
                    rate_key=rk,
                    rate_name=first.rate_name,
                    rate_display_name=first.rate_display_name,
                    tax_rate_id=first.tax_rate_id,
                    percentage=first.percentage,
                    tax_status=first.tax_status,
                    rows=n,
                    taxable_amount=amount,
                    taxable_amount_major=major(amount, currency),
                    taxable_base=base,
                    taxable_base_major=major(base, currency),
                    tax=tax,
                    tax_major=major(tax, currency),
                )
            )
        return out


def _instant(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Encoder:
    """The report as text, piece by piece: ``head()``, ``rows(...)`` for each page,
    ``tail()``. CSV: a header row, then the rows (RFC 4180, CRLF); JSON: ``{"from", "to",
    "rows": [...], "totals": [...]}``, the totals of every row encoded."""

    def __init__(self, fmt: Format, start: datetime, end: datetime) -> None:
        self.fmt = fmt
        self.start, self.end = start, end
        self.totals = Totals()
        self.count = 0

    def _csv(self, lines: Iterable[Sequence[str]]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerows(lines)
        return buffer.getvalue()

    def head(self) -> str:
        if self.fmt == "csv":
            return self._csv([COLUMNS])
        period = {"from": _instant(self.start), "to": _instant(self.end)}
        return json.dumps(period)[:-1] + ', "rows": ['

    def rows(self, rows: Sequence[TaxReportRow]) -> str:
        self.totals.add(rows)
        first = self.count == 0
        self.count += len(rows)
        if self.fmt == "csv":
            dumped = (r.model_dump(mode="json") for r in rows)
            return self._csv([_cell(d[c]) for c in COLUMNS] for d in dumped)
        text = ", ".join(r.model_dump_json() for r in rows)
        return text if first or not text else ", " + text

    def tail(self) -> str:
        if self.fmt == "csv":
            return ""
        totals = ", ".join(t.model_dump_json() for t in self.totals.result())
        return f'], "totals": [{totals}]}}\n'
