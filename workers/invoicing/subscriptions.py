"""Subscription commands: create, cancel (at the period's end or at once) and change plans;
each applies one command in one transaction and returns its result (merged into
``commands.COMMANDS``)."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from schemas.envelope import CloudEvent
from schemas.invoicing import (
    CancelSubscription,
    ChangeSubscriptionPlan,
    CreateSubscription,
    SubscriptionCreated,
    SubscriptionEnded,
    SubscriptionUpdated,
)
from storage.invoicing import Customer, InvoicingRepository, Plan, Subscription
from storage.invoicing.trials import TrialRepository
from workers.invoicing import jobs, lifecycle, service, views
from workers.invoicing.base import Handler, Result
from workers.invoicing.base import emit as _emit
from workers.invoicing.errors import Conflict, NotFound
from workers.invoicing.lines import PLANS
from workers.runtime import Tx

_STATE_FIELDS = tuple(f.name for f in fields(lifecycle.SubscriptionState))


async def _plan(repo: InvoicingRepository, tenant: str, key: str, field: str) -> Plan:
    plan = await repo.plan(tenant, key)
    if plan is None:
        raise NotFound(f"no plan {key!r}", field=field)
    return plan


def _subscription_event(
    tx: Tx,
    cls: service.SubscriptionEvent,
    cmd: CloudEvent,
    sub: Subscription,
    customer: Customer,
    plans: dict[str, Plan],
) -> None:
    data = views.subscription_data(sub, customer.external_id, plans)
    _emit(tx, service.subscription_event(cls, data, **cmd.caused()), customer.external_id)


async def create_subscription(cmd: CreateSubscription, tx: Tx) -> Result:
    """Subscribes a customer to a plan in its currency (once per id; no second live
    subscription of the customer to the same plan); emits subscription.created."""
    repo = tx.repo(InvoicingRepository)
    spec, tenant = cmd.data, cmd.tenantid
    existing = await repo.subscription(tenant, spec.id)
    customer = await repo.customer(tenant, spec.customer)
    if customer is None:
        raise NotFound(f"no customer {spec.customer!r}", field="customer")
    if customer.invoice_to == "parent":
        raise Conflict(
            f"customer {spec.customer!r} is invoiced to its parent: its usage is billed on its "
            "payer's subscriptions (docs/hierarchies.md)",
            field="customer",
        )
    plan = await _plan(repo, tenant, spec.plan, "plan")
    if existing is not None:
        if (existing.customer_id, existing.plan_id, existing.start) != (
            customer.id,
            plan.id,
            spec.start,
        ):
            raise Conflict(f"subscription {spec.id!r} exists with other terms", field="id")
        return {"subscription_id": existing.id}
    if plan.currency != customer.currency:
        raise Conflict(
            f"plan {plan.key!r} is in {plan.currency} but the customer pays in {customer.currency}",
            field="plan",
        )
    overlap = await repo.overlapping(tenant, customer.id, plan.id)
    if overlap is not None:
        raise Conflict(
            f"the customer already has subscription {overlap!r} to plan {plan.key!r}",
            field="plan",
        )
    trial = lifecycle.trial_end(
        spec.start, spec.trial_end, spec.trial_days, PLANS.spec(plan).trial_days
    )
    start, end = lifecycle.first_period(spec.start, plan.interval, trial)
    sub = await repo.add_subscription(
        tenant_id=tenant,
        id=spec.id,
        customer_id=customer.id,
        plan_id=plan.id,
        next_plan_id=None,
        status="active",
        start=spec.start,
        anchor=spec.start,
        period_index=0,
        current_period_start=start,
        current_period_end=end,
        cancel_at_period_end=False,
        trial_end=trial,
        trial_end_behavior=spec.trial_end_behavior,
        bill_trial_usage=spec.bill_trial_usage,
        period_proration=Decimal(1),
    )
    _subscription_event(tx, SubscriptionCreated, cmd, sub, customer, {plan.id: plan})
    return {"subscription_id": sub.id}


async def _live(
    repo: InvoicingRepository, tenant: str, id: str
) -> tuple[Subscription, Customer, dict[str, Plan]]:
    sub = await repo.subscription(tenant, id, lock=True)
    if sub is None:
        raise NotFound(f"no subscription {id!r}", field="subscription_id")
    if sub.status != "active":
        raise Conflict(f"subscription {id!r} has ended", field="subscription_id")
    customer = (await repo.customers([sub.customer_id]))[sub.customer_id]
    plan_ids = {sub.plan_id} | ({sub.next_plan_id} if sub.next_plan_id else set())
    return sub, customer, await repo.plans(plan_ids)


async def cancel_subscription(cmd: CancelSubscription, tx: Tx) -> Result:
    """At the period's end (it is billed in full), or at once: the final invoice prorates
    the flat fees to the second."""
    repo = tx.repo(InvoicingRepository)
    spec, tenant = cmd.data, cmd.tenantid
    sub, customer, plans = await _live(repo, tenant, spec.subscription_id)
    if spec.mode == "at_period_end":
        if not sub.cancel_at_period_end:
            await repo.cancel_at_period_end(sub)
            _subscription_event(tx, SubscriptionUpdated, cmd, sub, customer, plans)
        return {"subscription_id": sub.id, "ends_at": sub.current_period_end.isoformat()}
    at: datetime = spec.at or cmd.time
    if not sub.current_period_start <= at < sub.current_period_end:
        raise Conflict(
            f"'at' must fall in the current period [{sub.current_period_start.isoformat()}, "
            f"{sub.current_period_end.isoformat()}); use mode 'at_period_end' for its end",
            field="at",
        )
    state = _state(sub)
    share = lifecycle.split(
        state.flat_share(), sub.current_period_start, state.current_period_end, at
    )[0]
    configs = await repo.configs([tenant])
    start = sub.current_period_start
    await repo.end_subscription(sub, at)
    draft = (tenant, sub.id, customer, plans[sub.plan_id], start, at, share, state.usage_billed())
    await jobs.create_drafts(tx, [draft], configs)
    _subscription_event(tx, SubscriptionEnded, cmd, sub, customer, plans)
    return {"subscription_id": sub.id, "ended_at": at.isoformat(), "proration": str(share)}


async def change_subscription_plan(cmd: ChangeSubscriptionPlan, tx: Tx) -> Result:
    """Switches plans at the next period boundary (changing back before it: stay), or
    immediately (``change_now``)."""
    repo = tx.repo(InvoicingRepository)
    spec, tenant = cmd.data, cmd.tenantid
    sub, customer, plans = await _live(repo, tenant, spec.subscription_id)
    plan = await _plan(repo, tenant, spec.plan, "plan")
    if plan.currency != customer.currency:
        raise Conflict(
            f"plan {plan.key!r} is in {plan.currency}, the customer pays in {customer.currency}",
            field="plan",
        )
    if sub.cancel_at_period_end:
        raise Conflict("the subscription ends at this period's end", field="subscription_id")
    if spec.mode == "immediately":
        return await change_now(cmd, tx, sub, customer, plans | {plan.id: plan}, plan)
    if plan.id == sub.plan_id:
        if sub.next_plan_id is None:
            return {"subscription_id": sub.id, "effective_at": None}
        await repo.set_next_plan(sub, None)  # changing back before the boundary: stay on it
    else:
        await repo.set_next_plan(sub, plan.id)
    plans[plan.id] = plan
    _subscription_event(tx, SubscriptionUpdated, cmd, sub, customer, plans)
    return {"subscription_id": sub.id, "effective_at": sub.current_period_end.isoformat()}


def _state(sub: Subscription) -> lifecycle.SubscriptionState:
    return lifecycle.SubscriptionState(**{f: getattr(sub, f) for f in _STATE_FIELDS})


async def change_now(
    cmd: ChangeSubscriptionPlan,
    tx: Tx,
    sub: Subscription,
    customer: Customer,
    plans: dict[str, Plan],
    plan: Plan,
) -> Result:
    """The current period is cut at ``at`` on the old plan (a draft for [its start, ``at``)
    prorated to the second, usage up to the end of the hour of ``at``, as an immediate
    cancel) and the new plan starts at ``at`` (``lifecycle.change_now``). The same plan
    again: nothing changes (a redelivered command finds it done)."""
    repo = tx.repo(InvoicingRepository)
    at: datetime = cmd.data.at or cmd.time
    if plan.id == sub.plan_id:
        if sub.next_plan_id is not None:
            await repo.set_next_plan(sub, None)
            _subscription_event(tx, SubscriptionUpdated, cmd, sub, customer, plans)
        return {"subscription_id": sub.id, "effective_at": None}
    if not sub.current_period_start <= at < sub.current_period_end:
        raise Conflict(
            f"'at' must fall in the current period [{sub.current_period_start.isoformat()}, "
            f"{sub.current_period_end.isoformat()}); use mode 'at_period_end' for its end",
            field="at",
        )
    state = _state(sub)
    old = plans[sub.plan_id]
    start, share, usage = lifecycle.change_now(
        state, plan.id, at, PLANS.spec(old).interval, PLANS.spec(plan).interval
    )
    await tx.repo(TrialRepository).move(sub, {c: getattr(state, c) for c in jobs.SUB_STATE})
    if at > start:  # [start, start) bills nothing: the new plan takes the whole period
        draft = (cmd.tenantid, sub.id, customer, old, start, at, share, usage)
        await jobs.create_drafts(tx, [draft], await repo.configs([cmd.tenantid]))
    _subscription_event(tx, SubscriptionUpdated, cmd, sub, customer, plans)
    return {
        "subscription_id": sub.id,
        "effective_at": at.isoformat(),
        "proration": str(share),
        "new_period_end": sub.current_period_end.isoformat(),
        "new_proration": str(state.flat_share()),
    }


COMMANDS: dict[type[Any], Handler] = {
    CreateSubscription: create_subscription,
    CancelSubscription: cancel_subscription,
    ChangeSubscriptionPlan: change_subscription_plan,
}
