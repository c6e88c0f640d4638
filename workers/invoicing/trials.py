"""``subscription.trial_will_end``: a step of every billing run (the periodic one as of now,
and the runs tenants request as of their ``as_of``) tells each live trial once, the
tenant's ``trial_will_end_days`` before it ends (at once for a trial shorter than that).

Exactly once per subscription, under replays, kill -9 and several replicas: the step claims
the due subscriptions ``FOR UPDATE SKIP LOCKED``, marks them (``trial_will_end_sent_at``)
and puts the events in the outbox in one transaction; a crash rolls all of it back and the
next run does it again. A trial that ended before any run reached its notice time is not
told afterwards (it converted or ended: subscription.updated / subscription.ended say so).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from schemas import topics
from schemas.invoicing import SubscriptionTrialWillEnd
from storage.invoicing import InvoicingRepository, Subscription
from storage.invoicing.trials import TrialRepository
from workers.invoicing import service, views
from workers.runtime import Item, Jobs, Tx

TRIAL_WILL_END = "invoicing.trial_will_end"


def _item(sub: Subscription) -> Item:
    return Item(sub.tenant_id, "subscription", sub.id)


async def tell(tx: Tx, subs: Sequence[Subscription], as_of: datetime) -> int:
    """Emit ``subscription.trial_will_end`` for ``subs`` (claimed, locked) and mark them."""
    repo = tx.repo(InvoicingRepository)
    customers = await repo.customers({s.customer_id for s in subs})
    plans = await repo.plans(
        {s.plan_id for s in subs} | {s.next_plan_id for s in subs if s.next_plan_id}
    )
    for sub in subs:
        customer = customers[sub.customer_id].external_id
        data = views.subscription_data(sub, customer, plans)
        event = service.subscription_event(SubscriptionTrialWillEnd, data, tenantid=sub.tenant_id)
        tx.emit(
            event,
            topic=topics.EVENTS_INVOICING,
            key=topics.partition_key(sub.tenant_id, customer),
        )
    await tx.repo(TrialRepository).told(subs, as_of)
    return len(subs)


async def notify(jobs: Jobs, as_of: datetime, tenant_id: str | None, chunk: int) -> int:
    """Tell every trial whose notice is due by ``as_of``, chunk by chunk; returns how many."""

    async def claim(tx: Tx, only: Sequence[Item] | None) -> list[Subscription]:
        return await tx.repo(TrialRepository).claim_ending(
            as_of,
            tenant_id,
            chunk,
            job=TRIAL_WILL_END,
            only=None if only is None else [(i.tenant_id, i.id) for i in only],
        )

    async def apply(tx: Tx, subs: Sequence[Subscription]) -> int:
        return await tell(tx, subs, as_of)

    told = 0
    while (step := await jobs.claimed(TRIAL_WILL_END, claim, _item, apply)).claimed:
        told += step.applied
    return told
