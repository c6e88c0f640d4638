"""An invoice's sections, pure (docs/hierarchies.md): a consolidated invoice bills the usage
of customers invoiced to its payer, each in a section of its own (its lines' ``subject``).

- ``section_of``: which section each line belongs to — the payer's (flat fees, its own
  metered lines: ``subject`` empty or the payer's), another customer's (``subject``), a
  discount line that of the line it reduces; credit lines and discounts of no one line belong
  to the invoice as a whole (``None``).
- ``sections``: the payer first, then each other customer in the order its lines come; a
  section's subtotal is the sum of its charge lines (not discount or credit lines), so the
  subtotals add up to the invoice's ``subtotal``. None at all when every line is the payer's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from schemas.invoicing import InvoiceData, InvoiceLine

DISCOUNT, CREDIT = "discount", "credit"


@dataclass(frozen=True)
class Section:
    """One customer's part of an invoice."""

    customer: str  # its external id
    name: str
    subtotal: int  # minor units: its charge lines
    lines: tuple[int, ...]  # the positions (from 0) of its lines, discount lines included


def _charge(line: InvoiceLine) -> bool:
    return line.kind not in (DISCOUNT, CREDIT) and line.grant_id is None


def _own(invoice: InvoiceData, line: InvoiceLine) -> str:
    return line.subject if line.subject else invoice.customer


def consolidated(invoice: InvoiceData) -> bool:
    """Whether ``invoice`` bills any customer's lines besides its own."""
    return any(_charge(ln) and _own(invoice, ln) != invoice.customer for ln in invoice.lines)


def section_of(invoice: InvoiceData) -> list[str | None]:
    """Each line's section (a customer's external id), ``None``: the invoice as a whole."""
    out: list[str | None] = []
    for ln in invoice.lines:
        if _charge(ln):
            out.append(_own(invoice, ln))
        elif ln.kind == DISCOUNT and ln.applies_to is not None:
            target = invoice.lines[ln.applies_to] if ln.applies_to < len(invoice.lines) else None
            out.append(_own(invoice, target) if target is not None else None)
        else:
            out.append(None)
    return out


def section_customers(invoice: InvoiceData) -> list[str]:
    """The customers of the invoice's sections, the payer first; empty when it has none."""
    if not consolidated(invoice):
        return []
    order = [invoice.customer]
    for s in section_of(invoice):
        if s is not None and s not in order:
            order.append(s)
    return order


def sections(invoice: InvoiceData, names: Mapping[str, str]) -> list[Section]:
    """The invoice's sections (none when every line is its own customer's); ``names``:
    customers' names by external id (a missing name: the external id)."""
    order = section_customers(invoice)
    if not order:
        return []
    owners = section_of(invoice)
    out = []
    for customer in order:
        positions = tuple(i for i, s in enumerate(owners) if s == customer)
        subtotal = sum(invoice.lines[i].amount for i in positions if _charge(invoice.lines[i]))
        out.append(Section(customer, names.get(customer) or customer, subtotal, positions))
    return out
