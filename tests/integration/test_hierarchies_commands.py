"""Customer hierarchies' commands against the real broker and PostgreSQL: a tree is built
over HTTP, and every placement that breaks its rules fails with the field named and changes
nothing — cycles (also two commands racing on two partitions), another tenant's customer as
parent, a tree too deep, a customer billed to a payer in another currency, a payer changing
currency, subscriptions of a customer invoiced to its parent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import TenantKey, make_tenant
from tests.integration.http import Client
from tests.integration.test_invoicing import Stack, stack
from workers.invoicing.app import build as build_invoicing
from workers.invoicing.hierarchy import MAX_DEPTH
from workers.settings import Settings

PLAN = {"key": "basic", "name": "Basic", "currency": "USD", "interval": "month",
        "prices": [{"kind": "flat", "key": "base", "name": "Base", "amount": "10.00"}]}  # fmt: skip


def customer(external_id: str, **kw: Any) -> dict[str, Any]:
    return {"external_id": external_id, "name": external_id.title(), "currency": "USD"} | kw


@pytest.fixture
async def st(settings: Settings, tenant: TenantKey) -> AsyncIterator[Stack]:
    async with stack(settings, tenant, build_invoicing(settings)) as s:
        await s.api.ok("POST", "/v1/customers", customer("operator"))
        for g in ("garage-1", "garage-2"):
            await s.api.ok(
                "POST", "/v1/customers", customer(g, parent="operator", invoice_to="parent")
            )
        yield s


async def refused(api: Client, body: dict[str, Any], field: str) -> str:
    outcome = await api.command("POST", "/v1/customers", body)
    assert outcome["status"] == "failed", outcome
    assert outcome["error"]["field"] == field, outcome
    return str(outcome["error"]["message"])


async def test_the_tree_is_kept_and_shown(st: Stack) -> None:
    g1 = await st.api.get("/v1/customers/garage-1")
    assert (g1["parent"], g1["invoice_to"]) == ("operator", "parent")
    op = await st.api.get("/v1/customers/operator")
    assert (op["parent"], op["invoice_to"]) == (None, "self")
    # a garage moved out of the tree is invoiced on its own again
    await st.api.ok("POST", "/v1/customers", customer("garage-2"))
    g2 = await st.api.get("/v1/customers/garage-2")
    assert (g2["parent"], g2["invoice_to"]) == (None, "self")


async def test_a_cycle_is_refused_and_nothing_changes(st: Stack) -> None:
    await st.api.ok("POST", "/v1/customers", customer("bay-1", parent="garage-1"))
    why = await refused(st.api, customer("operator", parent="bay-1"), "parent")
    assert "operator → bay-1 → garage-1 → operator" in why
    assert (await st.api.get("/v1/customers/operator"))["parent"] is None


async def test_two_commands_closing_a_cycle_at_once_cannot_both_succeed(st: Stack) -> None:
    for i in range(3):
        a, b = f"a{i}", f"b{i}"
        await st.api.ok("POST", "/v1/customers", customer(a))
        await st.api.ok("POST", "/v1/customers", customer(b))
        # keyed by customer: two partitions, two consumers' transactions at the same time
        outcomes = await asyncio.gather(
            st.api.command("POST", "/v1/customers", customer(a, parent=b)),
            st.api.command("POST", "/v1/customers", customer(b, parent=a)),
        )
        assert sorted(o["status"] for o in outcomes) == ["failed", "succeeded"], outcomes
        parents = [(await st.api.get(f"/v1/customers/{c}"))["parent"] for c in (a, b)]
        assert parents.count(None) == 1, parents


async def test_another_tenants_customer_is_no_parent(
    st: Stack, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    other = Client(st.http, await make_tenant(sessions, "globex"))
    why = await refused(other, customer("lot-9", parent="operator"), "parent")
    assert "no customer 'operator'" in why
    assert (await other.send("GET", "/v1/customers/lot-9", None)).status_code == 404
    # globex's own "operator" is globex's: the trees never meet
    await other.ok("POST", "/v1/customers", customer("operator", currency="EUR"))
    await other.ok(
        "POST", "/v1/customers", customer("lot-9", parent="operator", currency="EUR",
                                          invoice_to="parent"),
    )  # fmt: skip
    assert (await st.api.get("/v1/customers/operator"))["currency"] == "USD"


async def test_a_tree_deeper_than_max_depth_is_refused(st: Stack) -> None:
    parent = "operator"
    for i in range(1, MAX_DEPTH + 1):  # operator is level 0: levels 1..MAX_DEPTH
        await st.api.ok("POST", "/v1/customers", customer(f"l{i}", parent=parent))
        parent = f"l{i}"
    why = await refused(st.api, customer("too-deep", parent=parent), "parent")
    assert f"at most {MAX_DEPTH}" in why
    assert (await st.api.send("GET", "/v1/customers/too-deep", None)).status_code == 404


async def test_currencies_of_a_payer_and_the_customers_it_bills_stay_one(st: Stack) -> None:
    why = await refused(
        st.api, customer("garage-3", parent="operator", invoice_to="parent", currency="EUR"),
        "currency",
    )  # fmt: skip
    assert "'operator' is invoiced in USD" in why
    assert (await st.api.send("GET", "/v1/customers/garage-3", None)).status_code == 404
    why = await refused(st.api, customer("operator", currency="EUR"), "currency")
    assert "2 customer(s)" in why
    # invoiced to itself, a child may pay in any currency
    await st.api.ok("POST", "/v1/customers", customer("garage-3", parent="operator",
                                                      currency="EUR"))  # fmt: skip


async def test_subscriptions_and_billing_to_a_parent_exclude_each_other(st: Stack) -> None:
    await st.api.ok("POST", "/v1/plans", PLAN)
    outcome = await st.api.command(
        "POST", "/v1/subscriptions", {"customer": "garage-1", "plan": "basic"}
    )
    assert outcome["status"] == "failed" and outcome["error"]["field"] == "customer", outcome
    assert await st.api.get("/v1/subscriptions", customer="garage-1") == []
    await st.api.ok("POST", "/v1/customers", customer("garage-4", parent="operator"))
    await st.api.ok("POST", "/v1/subscriptions", {"customer": "garage-4", "plan": "basic"})
    await refused(
        st.api, customer("garage-4", parent="operator", invoice_to="parent"), "invoice_to"
    )
    assert (await st.api.get("/v1/customers/garage-4"))["invoice_to"] == "self"
