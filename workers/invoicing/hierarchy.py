"""Customer hierarchies (docs/hierarchies.md), pure: where a customer may be placed in its
tenant's tree and what its invoices bill. No I/O; ``commands.upsert_customer`` brings the
tree as the database holds it, locked for the tenant.

- A customer has at most one ``parent``, a customer of the same tenant (the database's
  foreign key holds that too); no cycle; at most ``MAX_DEPTH`` levels below a root.
- ``invoice_to: parent``: its usage is billed on its **payer's** invoices, the nearest
  ancestor invoiced to itself, in a section of its own. It is in the payer's currency and
  has no live subscriptions of its own (its usage would be billed twice); a payer bills at
  most ``MAX_SECTIONS`` customers besides itself (an invoice's size stays bounded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.invoicing import CustomerSpec
from workers.invoicing.errors import Conflict, NotFound

MAX_DEPTH = 8  # levels below a root customer
MAX_SECTIONS = 250  # customers billed on one payer's invoices, besides the payer itself


@dataclass(frozen=True)
class Node:
    """A customer as the tree sees it."""

    external_id: str
    currency: str
    invoice_to: str
    parent: str | None = None


@dataclass(frozen=True)
class Placement:
    """What ``check`` needs: the proposed parent and the chain above it (nearest first), the
    customer as it is now (None: new), what sits below it, and the payer's load."""

    parent: Node | None
    above_parent: Sequence[Node]  # the parent's ancestors, its own parent first
    current: Node | None
    subtree_height: int  # levels below the customer (0: a leaf or a new customer)
    rolled_up_below: int  # customers billed on its invoices now (invoice_to parent, below it)
    payer_others: int  # billed on the new payer's invoices now, not counting it or below it
    live_subscriptions: bool


def payer(parent: Node | None, above_parent: Sequence[Node]) -> Node | None:
    """The nearest of ``parent`` and its ancestors invoiced to itself."""
    for node in [parent, *above_parent] if parent is not None else []:
        if node.invoice_to == "self":
            return node
    return None


def check(spec: CustomerSpec, p: Placement) -> None:
    """Refuses a placement that breaks a rule above (the field named, nothing changed)."""
    if spec.parent is not None and p.parent is None:
        raise NotFound(f"no customer {spec.parent!r} in this tenant", field="parent")
    chain = [] if p.parent is None else [p.parent, *p.above_parent]
    if any(n.external_id == spec.external_id for n in chain):
        path = " → ".join([spec.external_id, *(n.external_id for n in chain)])
        raise Conflict(f"the parent would make a cycle: {path}", field="parent")
    if len(chain) + p.subtree_height > MAX_DEPTH:  # its level is len(chain), the root's 0
        raise Conflict(
            f"the tree would be {len(chain) + p.subtree_height} levels deep below its "
            f"root; at most {MAX_DEPTH}",
            field="parent",
        )
    if (
        p.current is not None
        and p.current.invoice_to == "self"
        and p.rolled_up_below
        and p.current.currency != spec.currency
    ):
        raise Conflict(
            f"{p.rolled_up_below} customer(s) are billed on its invoices in "
            f"{p.current.currency}; move them first",
            field="currency",
        )
    if spec.invoice_to == "self":
        return
    pays = payer(p.parent, p.above_parent)
    if pays is None:  # the root of every tree is invoiced to itself
        raise Conflict("no ancestor is invoiced to itself", field="invoice_to")
    if pays.currency != spec.currency:
        raise Conflict(
            f"its payer {pays.external_id!r} is invoiced in {pays.currency}; a customer billed "
            f"on its invoices must be in {pays.currency} too, not {spec.currency}",
            field="currency",
        )
    if p.live_subscriptions:
        raise Conflict(
            "the customer has live subscriptions; end them before billing its usage on "
            f"{pays.external_id!r}'s invoices",
            field="invoice_to",
        )
    if p.payer_others + 1 + p.rolled_up_below > MAX_SECTIONS:
        raise Conflict(
            f"{pays.external_id!r} already bills {p.payer_others} customers' usage; at most "
            f"{MAX_SECTIONS}",
            field="invoice_to",
        )
