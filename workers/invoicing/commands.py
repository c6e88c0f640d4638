"""What each invoicing command does, given one transaction. A ``PermanentError`` fails the
command and rolls back everything it wrote (the runtime runs each in a savepoint)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from schemas.envelope import CloudEvent, new_id
from schemas.invoicing import (
    CancelSubscription,
    ChangeSubscriptionPlan,
    ConfigureInvoicing,
    CreatePlan,
    CreateSubscription,
    CustomerCreated,
    CustomerData,
    CustomerSpec,
    CustomerUpdated,
    InvoiceMarkedUncollectible,
    InvoiceVoided,
    InvoicingCommand,
    MarkInvoiceUncollectible,
    PlanCreated,
    PlanData,
    RunBilling,
    SubscriptionCreated,
    SubscriptionEnded,
    SubscriptionUpdated,
    UpsertCustomer,
    VoidInvoice,
)
from schemas.pricing import FlatPrice, PlanSpec
from storage.db import AsyncSession
from storage.invoicing import BillingRun, Customer, InvoicingRepository, Plan, Subscription
from storage.metering import MeterRepository
from workers.invoicing import service
from workers.invoicing.billing import (
    SOURCE,
    Billing,
    Work,
    customer_key,
    line_models,
    subscription_data,
    values,
)
from workers.invoicing.errors import Conflict, NotFound

Result = dict[str, Any]


class Commands:
    def __init__(self, session: AsyncSession, work: Work, billing: Billing) -> None:
        self.repo = InvoicingRepository(session)
        self.meters = MeterRepository(session)
        self.work = work
        self.billing = billing

    async def apply(self, cmd: InvoicingCommand) -> Result:
        handler = getattr(self, f"_{type(cmd).__name__}")
        result: Result = await handler(cmd)
        return result

    def emit(self, event: CloudEvent, tenant: str, external_id: str) -> None:
        self.work.emit(event, customer_key(tenant, external_id))

    # --- customers ---------------------------------------------------------------------

    async def _UpsertCustomer(self, cmd: UpsertCustomer) -> Result:
        spec, tenant = cmd.data, cmd.tenantid
        columns = spec.model_dump(exclude={"billing_address"}) | {
            "billing_address": spec.billing_address.model_dump() if spec.billing_address else None
        }
        customer = await self.repo.customer(tenant, spec.external_id)
        if customer is None:
            customer = Customer(id=new_id(), tenant_id=tenant, **columns)
            self.repo.add(customer)
            await self.repo.flush()
            event: type[CustomerCreated] | type[CustomerUpdated] = CustomerCreated
        else:
            if _customer_spec(customer) == spec:
                return {"customer_id": customer.id}
            if customer.currency != spec.currency and await self.repo.has_live_subscriptions(
                tenant, customer.id
            ):
                raise Conflict(
                    f"the customer has live subscriptions in {customer.currency}; "
                    "end them before changing its currency",
                    field="currency",
                )
            for k, v in columns.items():
                setattr(customer, k, v)
            customer.updated_at = cmd.time
            event = CustomerUpdated
        self.emit(
            event(
                source=SOURCE,
                subject=spec.external_id,
                data=CustomerData(**spec.model_dump(), customer_id=customer.id),
                **cmd.caused(),
            ),
            tenant,
            spec.external_id,
        )
        return {"customer_id": customer.id}

    # --- plans -------------------------------------------------------------------------

    async def _CreatePlan(self, cmd: CreatePlan) -> Result:
        spec, tenant = cmd.data, cmd.tenantid
        meters = await self.meters.by_keys(
            {(tenant, p.meter) for p in spec.prices if not isinstance(p, FlatPrice)}
        )
        for i, p in enumerate(spec.prices):
            if not isinstance(p, FlatPrice) and (tenant, p.meter) not in meters:
                raise NotFound(f"no meter {p.meter!r}; create it first", field=f"prices[{i}].meter")
        plan = Plan(
            id=new_id(),
            tenant_id=tenant,
            key=spec.key,
            currency=spec.currency,
            interval=spec.interval,
            spec=spec.model_dump(mode="json"),
        )
        existing = await self.repo.add_plan(plan)
        if existing is not None:
            if PlanSpec.model_validate(existing.spec) != spec:
                raise Conflict(
                    f"plan {spec.key!r} exists with another definition; plans are immutable, "
                    "create a new key",
                    field="key",
                )
            return {"plan_id": existing.id}
        self.work.emit(
            PlanCreated(
                source=SOURCE,
                subject=spec.key,
                data=PlanData(**spec.model_dump(), plan_id=plan.id),
                **cmd.caused(),
            ),
            tenant,
        )
        return {"plan_id": plan.id}

    # --- subscriptions -----------------------------------------------------------------

    async def _plan(self, tenant: str, key: str, field: str) -> Plan:
        plan = await self.repo.plan(tenant, key)
        if plan is None:
            raise NotFound(f"no plan {key!r}", field=field)
        return plan

    async def _CreateSubscription(self, cmd: CreateSubscription) -> Result:
        spec, tenant = cmd.data, cmd.tenantid
        existing = await self.repo.subscription(tenant, spec.id)
        customer = await self.repo.customer(tenant, spec.customer)
        if customer is None:
            raise NotFound(f"no customer {spec.customer!r}", field="customer")
        plan = await self._plan(tenant, spec.plan, "plan")
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
                f"plan {plan.key!r} is in {plan.currency} but the customer pays in "
                f"{customer.currency}",
                field="plan",
            )
        overlap = await self.repo.overlapping(tenant, customer.id, plan.id)
        if overlap is not None:
            raise Conflict(
                f"the customer already has subscription {overlap!r} to plan {plan.key!r}",
                field="plan",
            )
        start, end = service.period(spec.start, plan.interval, 0)
        sub = Subscription(
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
        )
        self.repo.add(sub)
        await self.repo.flush()
        self._sub_event(SubscriptionCreated, cmd, sub, customer, {plan.id: plan})
        return {"subscription_id": sub.id}

    def _sub_event(
        self,
        cls: type[SubscriptionCreated] | type[SubscriptionUpdated] | type[SubscriptionEnded],
        cmd: CloudEvent,
        sub: Subscription,
        customer: Customer,
        plans: dict[str, Plan],
    ) -> None:
        data = subscription_data(sub, customer.external_id, plans)
        self.emit(
            cls(source=SOURCE, subject=sub.id, data=data, **cmd.caused()),
            sub.tenant_id,
            customer.external_id,
        )

    async def _live(self, tenant: str, id: str) -> tuple[Subscription, Customer, dict[str, Plan]]:
        sub = await self.repo.subscription(tenant, id, lock=True)
        if sub is None:
            raise NotFound(f"no subscription {id!r}", field="subscription_id")
        if sub.status != "active":
            raise Conflict(f"subscription {id!r} has ended", field="subscription_id")
        customer = (await self.repo.customers([sub.customer_id]))[sub.customer_id]
        plan_ids = {sub.plan_id} | ({sub.next_plan_id} if sub.next_plan_id else set())
        return sub, customer, await self.repo.plans(plan_ids)

    async def _CancelSubscription(self, cmd: CancelSubscription) -> Result:
        spec, tenant = cmd.data, cmd.tenantid
        sub, customer, plans = await self._live(tenant, spec.subscription_id)
        if spec.mode == "at_period_end":
            if not sub.cancel_at_period_end:
                sub.cancel_at_period_end = True
                self._sub_event(SubscriptionUpdated, cmd, sub, customer, plans)
            return {"subscription_id": sub.id, "ends_at": sub.current_period_end.isoformat()}
        at: datetime = spec.at or cmd.time
        if not sub.current_period_start <= at < sub.current_period_end:
            raise Conflict(
                f"'at' must fall in the current period [{sub.current_period_start.isoformat()}, "
                f"{sub.current_period_end.isoformat()}); use mode 'at_period_end' for its end",
                field="at",
            )
        share = service.proration(sub.current_period_start, sub.current_period_end, at)
        configs = await self.repo.configs([tenant])
        start = sub.current_period_start
        sub.status, sub.ended_at, sub.current_period_end = "ended", at, at
        sub.next_plan_id = None
        await self.billing.create_drafts(
            self.work,
            [(tenant, sub.id, customer, plans[sub.plan_id], start, at, share)],
            configs,
        )
        self._sub_event(SubscriptionEnded, cmd, sub, customer, plans)
        return {"subscription_id": sub.id, "ended_at": at.isoformat(), "proration": str(share)}

    async def _ChangeSubscriptionPlan(self, cmd: ChangeSubscriptionPlan) -> Result:
        spec, tenant = cmd.data, cmd.tenantid
        sub, customer, plans = await self._live(tenant, spec.subscription_id)
        plan = await self._plan(tenant, spec.plan, "plan")
        if plan.currency != customer.currency:
            raise Conflict(
                f"plan {plan.key!r} is in {plan.currency}, the customer pays in "
                f"{customer.currency}",
                field="plan",
            )
        if sub.cancel_at_period_end:
            raise Conflict("the subscription ends at this period's end", field="subscription_id")
        if plan.id == sub.plan_id:
            if sub.next_plan_id is None:
                return {"subscription_id": sub.id, "effective_at": None}
            sub.next_plan_id = None  # changing back before the boundary: stay on it
        else:
            sub.next_plan_id = plan.id
        plans[plan.id] = plan
        self._sub_event(SubscriptionUpdated, cmd, sub, customer, plans)
        return {"subscription_id": sub.id, "effective_at": sub.current_period_end.isoformat()}

    # --- billing runs and invoices --------------------------------------------------

    async def _RunBilling(self, cmd: RunBilling) -> Result:
        run = BillingRun(tenant_id=cmd.tenantid, id=cmd.data.id, as_of=cmd.data.as_of)
        if not await self.repo.add_run(run):
            existing = await self.repo.run(cmd.tenantid, cmd.data.id)
            if existing is not None and existing.as_of != cmd.data.as_of:
                raise Conflict(f"billing run {cmd.data.id!r} exists with another as_of", field="id")
        return {"billing_run_id": cmd.data.id, "status_url": f"/v1/billing-runs/{cmd.data.id}"}

    async def _close(self, cmd: VoidInvoice | MarkInvoiceUncollectible, to: str) -> Result:
        tenant, spec = cmd.tenantid, cmd.data
        invoice = await self.repo.invoice(tenant, spec.invoice_id, lock=True)
        if invoice is None:
            raise NotFound(f"no invoice {spec.invoice_id!r}", field="invoice_id")
        service.check_transition(invoice.status, to)
        invoice.status, invoice.closed_at, invoice.status_reason = to, cmd.time, spec.reason
        customer = (await self.repo.customers([invoice.customer_id]))[invoice.customer_id]
        lines = line_models((await self.repo.lines([invoice.id]))[invoice.id])
        event_type = InvoiceVoided if to == "void" else InvoiceMarkedUncollectible
        view = service.invoice_data(values(invoice), customer.external_id, lines)
        self.emit(
            event_type(source=SOURCE, subject=invoice.id, data=view, **cmd.caused()),
            tenant,
            customer.external_id,
        )
        return {"invoice_id": invoice.id, "status": to}

    async def _VoidInvoice(self, cmd: VoidInvoice) -> Result:
        return await self._close(cmd, "void")

    async def _MarkInvoiceUncollectible(self, cmd: MarkInvoiceUncollectible) -> Result:
        return await self._close(cmd, "uncollectible")

    async def _ConfigureInvoicing(self, cmd: ConfigureInvoicing) -> Result:
        await self.repo.set_config(cmd.tenantid, cmd.data.model_dump())
        return cmd.data.model_dump()


def _customer_spec(c: Customer) -> CustomerSpec:
    return CustomerSpec(
        external_id=c.external_id,
        name=c.name,
        email=c.email,
        currency=c.currency,
        tax_rate=Decimal(c.tax_rate) if c.tax_rate is not None else None,
        tax_exempt=c.tax_exempt,
        net_terms_days=c.net_terms_days,
        billing_address=c.billing_address,
    )
