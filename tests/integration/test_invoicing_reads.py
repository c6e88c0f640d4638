"""The invoicing API's reads take no row locks: a command holding a customer's row (an
upsert, a subscription, a billing run's chunk) never makes `GET /v1/customers/{id}` or
`GET /v1/invoices?customer=` wait for it, and a read never makes a command wait."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from tests.integration.support import Sessions
from tests.integration.test_invoicing import Stack, billing, billing_settings  # noqa: F401

#: far longer than a read takes, far shorter than a held lock would make it wait
ANSWER_WITHIN_S = 10.0


async def test_reads_answer_while_a_command_holds_the_customers_row(
    billing: Stack,  # noqa: F811
    sessions: Sessions,
) -> None:
    async with sessions() as session, session.begin():
        # what a command does with the customer: its row locked until it commits
        locked = await session.scalar(
            text("SELECT name FROM customers WHERE external_id = 'alice' FOR UPDATE")
        )
        assert locked == "Alice Ltd"
        customer, invoices = await asyncio.wait_for(
            asyncio.gather(
                billing.api.get("/v1/customers/alice"),
                billing.api.get("/v1/invoices", customer="alice"),
            ),
            ANSWER_WITHIN_S,
        )
        assert (customer["external_id"], customer["name"]) == ("alice", "Alice Ltd")
        assert invoices == []
