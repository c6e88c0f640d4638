"""Credit balances as the API, the alerts and the automatic top-ups read them: each grant's
balance and status, the customer's balance, the cost of what is not invoiced yet, and the
projected balance (balance - pending cost): the "remaining credit" a product shows and a
hard limit can act on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from schemas.credits import CreditGrantData, GrantStatus
from storage.invoicing import InvoicingRepository
from storage.invoicing.credits import CreditRepository
from workers.invoicing import credits, service
from workers.invoicing.lines import PLANS
from workers.invoicing.views import DraftPeriod, config_of, draft_amounts
from workers.runtime import Tx

if TYPE_CHECKING:
    from storage.invoicing import Customer


@dataclass(frozen=True)
class CreditBalance:
    """One customer's credit as of a time (minor units of its currency)."""

    tenant_id: str
    customer: str  # external id
    currency: str
    balance: int  # the sum of its grants' balances
    pending: int  # the invoice-to-be of its drafts and current periods
    grants: tuple[CreditGrantData, ...]

    @property
    def projected(self) -> int:
        return self.balance - self.pending


async def credit_balances(
    tx: Tx, customers: Sequence[Customer], as_of: datetime
) -> list[CreditBalance]:
    """The credit of each of ``customers`` as of ``as_of``. A grant whose expiry has come is
    worth nothing from then, even before the expiry job wrote its entry. The pending cost
    counts the drafts' totals and, for each live subscription, the invoice its current
    period would get if it closed now (with tax when credits apply after tax, without it
    before tax). Scopes are not considered: the projection is what all grants could pay."""
    if not customers:
        return []
    repo = tx.repo(CreditRepository)
    ids = [c.id for c in customers]
    grants = [
        g
        for tenant in sorted({c.tenant_id for c in customers})
        for g in await repo.grants(tenant, [c.id for c in customers if c.tenant_id == tenant])
    ]
    sums = await repo.grant_sums(ids, as_of)
    drafts, subs = await repo.unbilled(ids)
    configs = await tx.repo(InvoicingRepository).configs({c.tenant_id for c in customers})
    by_id = {c.id: c for c in customers}
    periods = [
        (
            sub.customer_id,
            DraftPeriod(
                sub.tenant_id,
                by_id[sub.customer_id].external_id,
                PLANS.spec(plan),
                plan.currency,
                sub.current_period_start,
                sub.current_period_end,
                _tax_rate(by_id[sub.customer_id]),
                config_of(configs.get(sub.tenant_id)).rounding,
                by_id[sub.customer_id].tax_rates,
                by_id[sub.customer_id].tax_status,
            ),
        )
        for sub, plan in subs
    ]
    amounts = await draft_amounts(tx, [p for _, p in periods])
    pending: dict[str, int] = {}

    def add(customer_id: str, t: service.Totals | tuple[int, int]) -> None:
        subtotal, total = (t.subtotal, t.total) if isinstance(t, service.Totals) else t
        mode = config_of(configs.get(by_id[customer_id].tenant_id)).credits_apply
        pending[customer_id] = pending.get(customer_id, 0) + (
            subtotal if mode == service.BEFORE_TAX else total
        )

    for d in drafts:
        add(d.customer_id, (d.subtotal, d.total))
    for (customer_id, _), t in zip(periods, amounts, strict=True):
        add(customer_id, t)
    out = []
    for c in customers:
        views = []
        for g in (g for g in grants if g.customer_id == c.id):
            balance, kinds = sums.get(g.id, (0, set()))
            state: GrantStatus = credits.status(g, kinds, balance, as_of)
            if state == "expired":
                balance = 0
            views.append(credits.grant_data(g, c.external_id, balance, state))
        out.append(
            CreditBalance(
                c.tenant_id,
                c.external_id,
                c.currency,
                sum(v.balance for v in views if v.currency == c.currency),
                max(pending.get(c.id, 0), 0),
                tuple(views),
            )
        )
    return out


def _tax_rate(c: Customer) -> Decimal | None:
    return None if c.tax_exempt else c.tax_rate
