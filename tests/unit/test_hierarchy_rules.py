"""The rules of customer hierarchies (workers/invoicing/hierarchy.py), pure: where a
customer may be placed and who pays for a customer invoiced to its parent."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.invoicing import CustomerSpec
from workers.invoicing import hierarchy
from workers.invoicing.errors import Conflict, NotFound
from workers.invoicing.hierarchy import MAX_DEPTH, MAX_SECTIONS, Node, Placement


def spec(external_id: str = "garage-1", **kw: Any) -> CustomerSpec:
    return CustomerSpec.model_validate(
        {"external_id": external_id, "name": external_id, "currency": "USD"} | kw
    )


def placement(**kw: Any) -> Placement:
    values: dict[str, Any] = {
        "parent": Node("operator", "USD", "self"),
        "above_parent": (),
        "current": None,
        "subtree_height": 0,
        "rolled_up_below": 0,
        "payer_others": 0,
        "live_subscriptions": False,
    }
    return Placement(**(values | kw))


def refused(s: CustomerSpec, p: Placement) -> tuple[str, str]:
    with pytest.raises((Conflict, NotFound)) as e:
        hierarchy.check(s, p)
    return str(e.value.field), str(e.value)


def test_a_child_invoiced_to_its_parent_in_the_parents_currency_is_placed() -> None:
    hierarchy.check(spec(parent="operator", invoice_to="parent"), placement())


def test_an_unknown_parent_is_not_found() -> None:
    field, why = refused(spec(parent="nobody"), placement(parent=None))
    assert field == "parent" and "nobody" in why


def test_a_parent_below_the_customer_is_a_cycle_named_in_full() -> None:
    # region-1 -> operator -> garage-1: garage-1 under region-1 closes the loop
    p = placement(
        parent=Node("region-1", "USD", "self", "operator"),
        above_parent=[Node("operator", "USD", "self", "garage-1"), Node("garage-1", "USD", "self")],
    )
    field, why = refused(spec(parent="region-1"), p)
    assert field == "parent"
    assert "garage-1 → region-1 → operator → garage-1" in why


def test_the_tree_is_at_most_max_depth_levels_deep() -> None:
    # the root is level 0: below MAX_DEPTH - 1 customers, its children are on level
    # MAX_DEPTH - 1 and theirs on MAX_DEPTH
    chain = [Node(f"n{i}", "USD", "self") for i in range(MAX_DEPTH - 1)]
    ok = placement(parent=chain[0], above_parent=chain[1:], subtree_height=1)
    hierarchy.check(spec(parent="n0"), ok)
    deeper = placement(parent=chain[0], above_parent=chain[1:], subtree_height=2)
    field, why = refused(spec(parent="n0"), deeper)
    assert field == "parent" and f"at most {MAX_DEPTH}" in why


def test_a_customer_in_another_currency_than_its_payer_is_refused() -> None:
    field, why = refused(spec(parent="operator", invoice_to="parent", currency="EUR"), placement())
    assert field == "currency" and "USD" in why and "EUR" in why


def test_the_payer_is_the_nearest_ancestor_invoiced_to_itself() -> None:
    # garage-1 -> region (invoiced to its parent, EUR would not matter) -> operator (JPY)
    p = placement(
        parent=Node("region", "JPY", "parent", "operator"),
        above_parent=[Node("operator", "JPY", "self")],
    )
    assert hierarchy.payer(p.parent, p.above_parent) == Node("operator", "JPY", "self")
    field, _ = refused(spec(parent="region", invoice_to="parent"), p)
    assert field == "currency"
    hierarchy.check(spec(parent="region", invoice_to="parent", currency="JPY"), p)


def test_a_customer_with_live_subscriptions_cannot_be_billed_to_its_parent() -> None:
    p = placement(current=Node("garage-1", "USD", "self"), live_subscriptions=True)
    field, _ = refused(spec(parent="operator", invoice_to="parent"), p)
    assert field == "invoice_to"
    hierarchy.check(spec(parent="operator"), p)  # invoiced to itself: fine


def test_a_payer_cannot_change_currency_under_customers_billed_on_its_invoices() -> None:
    p = placement(parent=None, current=Node("operator", "USD", "self"), rolled_up_below=3)
    field, why = refused(spec("operator", currency="EUR"), p)
    assert field == "currency" and "3 customer(s)" in why
    hierarchy.check(spec("operator", currency="USD", name="Operator Inc"), p)


def test_a_payer_bills_at_most_max_sections_customers() -> None:
    child = spec(parent="operator", invoice_to="parent")
    hierarchy.check(child, placement(payer_others=MAX_SECTIONS - 1))
    field, _ = refused(child, placement(payer_others=MAX_SECTIONS))
    # moving a customer with two below it brings three
    field2, _ = refused(child, placement(payer_others=MAX_SECTIONS - 2, rolled_up_below=2))
    assert field == field2 == "invoice_to"


def test_the_spec_refuses_what_needs_no_tree() -> None:
    with pytest.raises(ValueError, match="own parent"):
        spec(parent="garage-1")
    with pytest.raises(ValueError, match="needs a parent"):
        spec(invoice_to="parent")
    schema = CustomerSpec.model_json_schema()
    assert schema["if"]["properties"]["invoice_to"] == {"const": "parent"}
