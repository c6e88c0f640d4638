"""Customer hierarchies' SQL (docs/hierarchies.md): a customer's ancestors, its subtree,
and the customers whose usage is billed on a payer's invoices (``invoice_to = 'parent'``,
transitively). Every walk is bounded by ``depth`` (the commands refuse cycles and deeper
trees; the bound keeps a walk finite whatever the rows say)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sqlalchemy import func, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from storage.invoicing.models import Customer

_ANCESTORS = text(
    """
    WITH RECURSIVE up(external_id, parent, depth) AS (
        SELECT external_id, parent, 0 FROM customers
        WHERE tenant_id = :tenant AND external_id = :start
        UNION ALL
        SELECT c.external_id, c.parent, up.depth + 1
        FROM up JOIN customers c ON c.tenant_id = :tenant AND c.external_id = up.parent
        WHERE up.depth < :depth
    )
    SELECT external_id FROM up WHERE depth > 0 ORDER BY depth
    """
)

_SHAPE = text(
    """
    WITH RECURSIVE down(external_id, depth, billed) AS (
        SELECT CAST(:root AS varchar), 0, true
        UNION ALL
        SELECT c.external_id, down.depth + 1, down.billed AND c.invoice_to = 'parent'
        FROM down JOIN customers c ON c.tenant_id = :tenant AND c.parent = down.external_id
        WHERE down.depth < :depth
    )
    SELECT coalesce(max(depth), 0), count(*) FILTER (WHERE billed AND depth > 0) FROM down
    """
)

_ROLLED_UP = text(
    """
    WITH RECURSIVE down(payer, tenant_id, external_id, depth) AS (
        SELECT id, tenant_id, external_id, 0 FROM customers WHERE id = ANY(:ids)
        UNION ALL
        SELECT down.payer, c.tenant_id, c.external_id, down.depth + 1
        FROM down JOIN customers c
          ON c.tenant_id = down.tenant_id AND c.parent = down.external_id
         AND c.invoice_to = 'parent'
        WHERE down.depth < :depth
    )
    SELECT payer, external_id FROM down WHERE depth > 0 ORDER BY payer, external_id
    """
)

_DESCENDANTS = text(
    """
    WITH RECURSIVE down(external_id, depth) AS (
        SELECT CAST(:root AS varchar), 0
        UNION ALL
        SELECT c.external_id, down.depth + 1
        FROM down JOIN customers c ON c.tenant_id = :tenant AND c.parent = down.external_id
        WHERE down.depth < :depth
    )
    SELECT c.external_id, c.name, c.parent, c.invoice_to, c.currency, d.depth
    FROM down d JOIN customers c ON c.tenant_id = :tenant AND c.external_id = d.external_id
    WHERE d.depth > 0
      AND (CAST(:after AS varchar) IS NULL OR (d.depth, d.external_id) > (
            SELECT a.depth, a.external_id FROM down a
            WHERE a.external_id = :after AND a.depth > 0))
    ORDER BY d.depth, d.external_id
    LIMIT :limit
    """
)


class Descendant(NamedTuple):
    """A customer below another, ``depth`` levels down (its children: 1)."""

    external_id: str
    name: str
    parent: str | None
    invoice_to: str
    currency: str
    depth: int


_PAYERS = text(
    """
    WITH RECURSIVE up(tenant_id, start, external_id, parent, invoice_to, depth) AS (
        SELECT c.tenant_id, c.external_id, c.external_id, c.parent, c.invoice_to, 0
        FROM customers c
        JOIN unnest(CAST(:tenants AS varchar[]), CAST(:subjects AS varchar[])) AS w(t, s)
          ON c.tenant_id = w.t AND c.external_id = w.s
        WHERE c.invoice_to = 'parent'
        UNION ALL
        SELECT up.tenant_id, up.start, p.external_id, p.parent, p.invoice_to, up.depth + 1
        FROM up JOIN customers p ON p.tenant_id = up.tenant_id AND p.external_id = up.parent
        WHERE up.invoice_to = 'parent' AND up.depth < :depth
    )
    SELECT tenant_id, start, external_id FROM up WHERE invoice_to = 'self'
    """
)


class HierarchyRepository:
    """Reads of a tenant's customer tree; every query takes the tenant (or customer ids the
    caller holds)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock(self, tenant_id: str) -> None:
        """Serialise changes to one tenant's tree until the transaction ends (two commands
        on two partitions could otherwise close a cycle between them)."""
        await self.session.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(f"customers:{tenant_id}", 0)))
        )

    async def ancestors(self, tenant_id: str, external_id: str, depth: int) -> list[str]:
        """The external ids above ``external_id``, its parent first, at most ``depth``."""
        rows = await self.session.execute(
            _ANCESTORS, {"tenant": tenant_id, "start": external_id, "depth": depth}
        )
        return [r[0] for r in rows]

    async def shape(self, tenant_id: str, external_id: str, depth: int) -> tuple[int, int]:
        """The levels below ``external_id`` (0: none) and how many customers below it are
        billed on its invoices (``invoice_to = 'parent'`` all the way up to it)."""
        row = (
            await self.session.execute(
                _SHAPE, {"tenant": tenant_id, "root": external_id, "depth": depth}
            )
        ).one()
        return int(row[0]), int(row[1])

    async def rolled_up(self, customer_ids: Iterable[str], depth: int) -> dict[str, list[str]]:
        """For each customer id: the external ids of the customers whose usage its invoices
        bill (``invoice_to = 'parent'``, transitively), sorted; absent when none."""
        ids = sorted(set(customer_ids))
        out: dict[str, list[str]] = {}
        if not ids:
            return out
        for payer, external_id in await self.session.execute(
            _ROLLED_UP, {"ids": ids, "depth": depth}
        ):
            out.setdefault(payer, []).append(external_id)
        return out

    async def payers(
        self, subjects: Iterable[tuple[str, str]], depth: int
    ) -> dict[tuple[str, str], str]:
        """For each (tenant, external id) invoiced to its parent: its payer's external id
        (the nearest ancestor invoiced to itself); absent for the others."""
        pairs = sorted(set(subjects))
        if not pairs:
            return {}
        rows = await self.session.execute(
            _PAYERS,
            {"tenants": [t for t, _ in pairs], "subjects": [s for _, s in pairs], "depth": depth},
        )
        return {(t, s): payer for t, s, payer in rows}

    async def customers(self, tenant_id: str, external_ids: Iterable[str]) -> dict[str, Customer]:
        """Customers of ``tenant_id`` by external id."""
        rows = await self.session.scalars(
            select(Customer).where(
                Customer.tenant_id == tenant_id, Customer.external_id.in_(set(external_ids))
            )
        )
        return {c.external_id: c for c in rows}

    async def descendants(
        self, tenant_id: str, external_id: str, *, depth: int, limit: int, after: str | None
    ) -> list[Descendant]:
        """The customers below ``external_id`` (not itself), by depth then external id, after
        the customer ``after`` of that order (none when ``after`` is not below it)."""
        rows = await self.session.execute(
            _DESCENDANTS,
            {
                "tenant": tenant_id,
                "root": external_id,
                "depth": depth,
                "limit": limit,
                "after": after,
            },
        )
        return [Descendant(*r) for r in rows]

    async def names(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Customers' names by (tenant id, external id), of every tenant asked, in one query."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        rows = await self.session.execute(
            select(Customer.tenant_id, Customer.external_id, Customer.name).where(
                tuple_(Customer.tenant_id, Customer.external_id).in_(wanted)
            )
        )
        return {(t, e): n for t, e, n in rows}
