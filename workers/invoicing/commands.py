"""Invoicing's commands: one table from command type to the function that applies it, given
one transaction; each returns the command's result. A ``PermanentError`` fails the command
and rolls back everything it wrote (the runtime runs each in a savepoint)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.credits import (
    ConfigureAutoTopUp,
    CreateCommitment,
    CreditGrantSpec,
    GrantCredits,
    VoidCreditGrant,
)
from schemas.envelope import CloudEvent, new_id
from schemas.invoicing import (
    ConfigureInvoicing,
    CreatePlan,
    CustomerSpec,
    InvoiceMarkedUncollectible,
    InvoiceVoided,
    MarkInvoiceUncollectible,
    RunBilling,
    UpsertCustomer,
    VoidInvoice,
)
from schemas.pricing import FlatPrice, PlanSpec
from storage.invoicing import Customer, InvoicingRepository
from storage.invoicing.credits import CreditRepository
from storage.invoicing.hierarchy import HierarchyRepository
from storage.metering import MeterRepository
from workers.invoicing import (
    credit_notes,
    credits,
    discounting,
    hierarchy,
    ledger,
    one_off,
    service,
    subscriptions,
    tax_rates,
    taxing,
    views,
)
from workers.invoicing.base import Handler, Result
from workers.invoicing.base import emit as _emit
from workers.invoicing.errors import Conflict, NotFound
from workers.runtime import Tx

# --- customers -------------------------------------------------------------------------


async def upsert_customer(cmd: UpsertCustomer, tx: Tx) -> Result:
    """Creates the customer, or updates it when its spec changed (not its currency while it
    has live subscriptions); emits customer.created or customer.updated."""
    repo = tx.repo(InvoicingRepository)
    spec, tenant = cmd.data, cmd.tenantid
    columns = spec.model_dump(mode="json", exclude={"billing_address", "tax_rate"}) | {
        "billing_address": spec.billing_address.model_dump() if spec.billing_address else None,
        "tax_rate": spec.tax_rate,
        "tax_status": spec.taxability,
        "tax_exempt": spec.taxability == "exempt",
    }
    await taxing.check_names(tx, tenant, {"tax_rates": spec.tax_rates})
    customer = await repo.customer(tenant, spec.external_id)
    if customer is not None and views.same_customer(views.customer_spec(customer), spec):
        return {"customer_id": customer.id}
    await _place(tx, tenant, spec, customer)
    if customer is None:
        customer = await repo.add_customer(new_id(), tenant, columns)
        created = True
    else:
        if customer.currency != spec.currency and await repo.has_live_subscriptions(
            tenant, customer.id
        ):
            raise Conflict(
                f"the customer has live subscriptions in {customer.currency}; "
                "end them before changing its currency",
                field="currency",
            )
        await repo.update_customer(customer, columns, cmd.time)
        created = False
    _emit(tx, service.customer_event(cmd, customer.id, created=created), spec.external_id)
    return {"customer_id": customer.id}


def _node(c: Customer) -> hierarchy.Node:
    return hierarchy.Node(c.external_id, c.currency, c.invoice_to, c.parent)


async def _place(tx: Tx, tenant: str, spec: CustomerSpec, customer: Customer | None) -> None:
    """Refuses a parent or ``invoice_to`` that breaks the tree's rules (hierarchy.check),
    the tenant's tree locked until the command commits."""
    touches_tree = spec.parent is not None or (
        customer is not None and (customer.parent is not None or customer.invoice_to != "self")
    )
    # a payer's currency change: the customers billed on its invoices are in its currency
    rolls_up = customer is not None and customer.currency != spec.currency
    if not touches_tree and not rolls_up:
        return
    tree = tx.repo(HierarchyRepository)
    await tree.lock(tenant)
    depth = hierarchy.MAX_DEPTH + 1
    height, billed_below = 0, 0
    if customer is not None:
        height, billed_below = await tree.shape(tenant, spec.external_id, depth)
    if not touches_tree and not billed_below:
        return  # outside any tree, and nothing billed on its invoices
    chain: list[str] = []
    if spec.parent is not None:
        chain = [spec.parent, *await tree.ancestors(tenant, spec.parent, depth)]
    rows = await tree.customers(tenant, chain)
    nodes = [_node(rows[e]) for e in chain if e in rows]
    parent = nodes[0] if spec.parent in rows else None
    pays = hierarchy.payer(parent, nodes[1:])
    others = 0
    if spec.invoice_to == "parent" and pays is not None:
        payer_id = rows[pays.external_id].id
        billed = (await tree.rolled_up([payer_id], depth)).get(payer_id, [])
        # already billed there: it and those below it are in the count
        others = len(billed) - (1 + billed_below if spec.external_id in billed else 0)
    live = customer is not None and await tx.repo(InvoicingRepository).has_live_subscriptions(
        tenant, customer.id
    )
    hierarchy.check(
        spec,
        hierarchy.Placement(
            parent=parent,
            above_parent=nodes[1:],
            current=None if customer is None else _node(customer),
            subtree_height=height,
            rolled_up_below=billed_below,
            payer_others=others,
            live_subscriptions=live,
        ),
    )


# --- plans -----------------------------------------------------------------------------


async def create_plan(cmd: CreatePlan, tx: Tx) -> Result:
    """Defines a plan (immutable: the same definition again is a no-op, another one under
    the same key is refused); every metered price's meter must exist."""
    spec, tenant = cmd.data, cmd.tenantid
    named = {f"prices[{i}].tax_rates": p.tax_rates for i, p in enumerate(spec.prices)}
    await taxing.check_names(tx, tenant, {"tax_rates": spec.tax_rates} | named)
    meters = await tx.repo(MeterRepository).by_keys(
        {(tenant, p.meter) for p in spec.prices if not isinstance(p, FlatPrice)}
    )
    for i, p in enumerate(spec.prices):
        if not isinstance(p, FlatPrice) and (tenant, p.meter) not in meters:
            raise NotFound(f"no meter {p.meter!r}; create it first", field=f"prices[{i}].meter")
    plan_id = new_id()
    existing = await tx.repo(InvoicingRepository).add_plan(
        plan_id, tenant, spec.key, spec.currency, spec.interval, spec.model_dump(mode="json")
    )
    if existing is not None:
        if PlanSpec.model_validate(existing.spec) != spec:
            raise Conflict(
                f"plan {spec.key!r} exists with another definition; plans are immutable, "
                "create a new key",
                field="key",
            )
        return {"plan_id": existing.id}
    _emit(tx, service.plan_created(cmd, plan_id))
    return {"plan_id": plan_id}


# --- billing runs and invoices --------------------------------------------------------


async def run_billing(cmd: RunBilling, tx: Tx) -> Result:
    """Records a pending billing run (the billing job carries it out, ``scheduler.Scheduler``)."""
    repo = tx.repo(InvoicingRepository)
    if not await repo.add_run(cmd.tenantid, cmd.data.id, cmd.data.as_of):
        existing = await repo.run(cmd.tenantid, cmd.data.id)
        if existing is not None and existing.as_of != cmd.data.as_of:
            raise Conflict(f"billing run {cmd.data.id!r} exists with another as_of", field="id")
    return {"billing_run_id": cmd.data.id, "status_url": f"/v1/billing-runs/{cmd.data.id}"}


async def _close(tx: Tx, cmd: VoidInvoice | MarkInvoiceUncollectible, to: str) -> Result:
    repo = tx.repo(InvoicingRepository)
    tenant, spec = cmd.tenantid, cmd.data
    invoice = await repo.invoice(tenant, spec.invoice_id, lock=True)
    if invoice is None:
        raise NotFound(f"no invoice {spec.invoice_id!r}", field="invoice_id")
    if to == "void" and await credit_notes.has_open_notes(tx, invoice):
        raise Conflict("the invoice has credit notes; void them first", field="invoice_id")
    paid_by_credits = invoice.credits > 0 and invoice.amount_paid == 0
    service.check_transition(invoice.status, to, paid_by_credits=paid_by_credits)
    await repo.close_invoice(invoice, to, cmd.time, spec.reason)
    customer = (await repo.customers([invoice.customer_id]))[invoice.customer_id]
    if to == "void":
        await ledger.return_credits(tx, invoice, customer, cmd.time, cmd)
    lines = (await repo.lines([invoice.id]))[invoice.id]
    data = views.invoice_data(invoice, customer.external_id, lines)
    cls: service.InvoiceEvent = InvoiceVoided if to == "void" else InvoiceMarkedUncollectible
    _emit(tx, service.invoice_event(cls, data, **cmd.caused()), customer.external_id)
    return {"invoice_id": invoice.id, "status": to}


async def void_invoice(cmd: VoidInvoice, tx: Tx) -> Result:
    return await _close(tx, cmd, "void")


async def mark_invoice_uncollectible(cmd: MarkInvoiceUncollectible, tx: Tx) -> Result:
    return await _close(tx, cmd, "uncollectible")


async def configure_invoicing(cmd: ConfigureInvoicing, tx: Tx) -> Result:
    """Sets the tenant's rounding, grace period, invoice number prefix, default tax rates
    (each must exist) and the rest of its invoicing settings."""
    await taxing.check_names(tx, cmd.tenantid, {"tax_rates": cmd.data.tax_rates})
    await tx.repo(InvoicingRepository).set_config(cmd.tenantid, cmd.data.model_dump())
    return cmd.data.model_dump()


# --- credits ---------------------------------------------------------------------------


def _grant_columns(
    spec: CreditGrantSpec, tenant: str, customer: Customer, at: datetime
) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "id": spec.id,
        "customer_id": customer.id,
        "currency": spec.currency,
        "amount": spec.amount,
        "source": spec.source,
        "priority": spec.priority,
        "effective_at": spec.effective_at or at,
        "expires_at": spec.expires_at,
        "scope": spec.scope.model_dump(mode="json") if spec.scope else None,
        "rollover": spec.rollover.model_dump(mode="json") if spec.rollover else None,
        "purchase_amount": spec.purchase_amount,
        "invoice_id": None,
        "rolled_over_from": None,
        "description": spec.description,
    }


MAX_LIVE_GRANTS = 1000  # per customer: every invoice of it reads them all as it finalizes
_IMMUTABLE = ("customer_id", "currency", "amount", "source", "priority", "expires_at", "scope",
              "rollover", "purchase_amount", "description")  # fmt: skip


async def _customer_of(tx: Tx, tenant: str, external_id: str) -> Customer:
    customer = await tx.repo(InvoicingRepository).customer(tenant, external_id)
    if customer is None:
        raise NotFound(f"no customer {external_id!r}", field="customer")
    return customer


async def grant_credits(cmd: GrantCredits, tx: Tx) -> Result:
    """Grants credit (a ledger entry at ``effective_at``), or for a top-up issues its
    invoice (the grant takes effect when it is paid); emits credit.granted."""
    spec, tenant = cmd.data, cmd.tenantid
    customer = await _customer_of(tx, tenant, spec.customer)
    if spec.currency != customer.currency:
        raise Conflict(
            f"the customer pays in {customer.currency}; a grant in {spec.currency} cannot pay "
            "its invoices",
            field="currency",
        )
    if spec.expires_at is not None and spec.expires_at <= (spec.effective_at or cmd.time):
        raise Conflict("expires_at must be after the grant takes effect", field="expires_at")
    repo = tx.repo(CreditRepository)
    await repo.lock_customers([customer.id])
    columns = _grant_columns(spec, tenant, customer, cmd.time)
    if await repo.grant(tenant, spec.id) is None:
        live = await repo.live_grants(customer.id, cmd.time)
        if live >= MAX_LIVE_GRANTS:
            raise Conflict(
                f"the customer has {live} grants with credit left; at most {MAX_LIVE_GRANTS} "
                "(void or use some first)",
                field="customer",
            )
    grant = await repo.add_grant(**columns)
    if grant is None:
        existing = await repo.grant(tenant, spec.id)
        assert existing is not None
        if any(getattr(existing, c) != columns[c] for c in _IMMUTABLE):
            raise Conflict(
                f"grant {spec.id!r} exists with other terms; grants are immutable", field="id"
            )
        return {"grant_id": existing.id, "invoice_id": existing.invoice_id}
    if spec.purchase_amount is not None:
        config = views.config_of(await tx.repo(InvoicingRepository).config(tenant))
        invoice_id = await ledger.issue_top_up(tx, grant, customer, config, cmd.time, cmd)
        await repo.set_invoice(grant, invoice_id)
        return {"grant_id": grant.id, "invoice_id": invoice_id, "status": "pending"}
    entry = credits.entry(
        tenant, grant.id, customer.id, "granted", grant.amount, grant.effective_at,
        f"granted:{grant.id}",
    )  # fmt: skip
    await repo.add_entries([entry])
    await ledger.emit_grant(tx, grant, customer.external_id, cmd.time, cmd)
    status = "scheduled" if grant.effective_at > cmd.time else "active"
    return {"grant_id": grant.id, "invoice_id": None, "status": status}


async def void_credit_grant(cmd: VoidCreditGrant, tx: Tx) -> Result:
    """Voids what is left of a grant (an entry taking its balance to 0); emits
    credit.voided. Refused for a grant applied to an invoice that stands, and for an unpaid
    top-up (void its invoice instead)."""
    spec, tenant = cmd.data, cmd.tenantid
    repo = tx.repo(CreditRepository)
    grant = await repo.grant(tenant, spec.grant_id)
    if grant is None:
        raise NotFound(f"no credit grant {spec.grant_id!r}", field="grant_id")
    await repo.lock_customers([grant.customer_id])
    customer = (await tx.repo(InvoicingRepository).customers([grant.customer_id]))[
        grant.customer_id
    ]
    balance, state = await ledger.grant_state(tx, grant, cmd.time)
    if state == "voided":
        return {"grant_id": grant.id, "status": "voided"}
    if state == "pending":
        raise Conflict(
            f"grant {grant.id!r} is a top-up not paid yet; void its invoice "
            f"{grant.invoice_id!r} instead",
            field="grant_id",
        )
    applied = await repo.applied(tenant, grant.id)
    if applied:
        raise Conflict(
            f"grant {grant.id!r} paid {applied} minor units of invoices that stand; void "
            "those invoices first (their credits return to the grant)",
            field="grant_id",
        )
    if state == "expired":
        raise Conflict(f"grant {grant.id!r} has expired", field="grant_id")
    # never before the grant takes effect: its balance would be negative in between
    at = max(cmd.time, grant.effective_at)
    entry = credits.entry(
        tenant, grant.id, grant.customer_id, "voided", -balance, at, f"voided:{grant.id}",
        reason=spec.reason,
    )  # fmt: skip
    await repo.add_entries([entry])
    await ledger.emit_grant(tx, grant, customer.external_id, cmd.time, cmd, voided=True)
    return {"grant_id": grant.id, "status": "voided", "voided_amount": balance}


async def create_commitment(cmd: CreateCommitment, tx: Tx) -> Result:
    """Records a commitment (immutable: the same one again is a no-op, other terms under the
    same id are refused)."""
    spec, tenant = cmd.data, cmd.tenantid
    customer = await _customer_of(tx, tenant, spec.customer)
    if spec.currency != customer.currency:
        raise Conflict(
            f"the customer pays in {customer.currency}, not {spec.currency}", field="currency"
        )
    repo = tx.repo(CreditRepository)
    columns = {
        "tenant_id": tenant,
        "id": spec.id,
        "customer_id": customer.id,
        "currency": spec.currency,
        "amount": spec.amount,
        "start": spec.start,
        "end": spec.end,
        "description": spec.description,
    }
    if await repo.add_commitment(**columns) is None:
        existing = await repo.commitment(tenant, spec.id)
        assert existing is not None
        if any(getattr(existing, k) != v for k, v in columns.items()):
            raise Conflict(f"commitment {spec.id!r} exists with other terms", field="id")
    return {"commitment_id": spec.id}


async def configure_auto_top_up(cmd: ConfigureAutoTopUp, tx: Tx) -> Result:
    """Sets (or turns off) a customer's automatic top-up."""
    spec, tenant = cmd.data, cmd.tenantid
    customer = await _customer_of(tx, tenant, spec.customer)
    values = spec.model_dump(exclude={"customer"}) | {
        "tenant_id": tenant,
        "customer_id": customer.id,
        "purchase_amount": spec.purchase_amount or spec.amount,
    }
    await tx.repo(CreditRepository).set_auto_top_up(values)
    return spec.model_dump() | {"purchase_amount": values["purchase_amount"]}


COMMANDS: dict[type[Any], Handler] = {
    UpsertCustomer: upsert_customer,
    CreatePlan: create_plan,
    RunBilling: run_billing,
    VoidInvoice: void_invoice,
    MarkInvoiceUncollectible: mark_invoice_uncollectible,
    ConfigureInvoicing: configure_invoicing,
    GrantCredits: grant_credits,
    VoidCreditGrant: void_credit_grant,
    ConfigureAutoTopUp: configure_auto_top_up,
    CreateCommitment: create_commitment,
    **discounting.COMMANDS,
    **credit_notes.COMMANDS,
    **one_off.COMMANDS,
    **subscriptions.COMMANDS,
    **tax_rates.COMMANDS,
}


async def handle(cmd: CloudEvent, tx: Tx) -> Result:
    """Apply ``cmd`` with the handler the table names for its type."""
    return await COMMANDS[type(cmd)](cmd, tx)
