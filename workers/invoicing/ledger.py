"""The credit ledger's transactions, each inside the one ``Tx`` of its command, payment
event or job step: applying credits to the invoices a chunk finalizes, returning them when
an invoice is voided, issuing a top-up's invoice and granting it when paid, expiring grants
(with their rollover) and automatic top-ups. The arithmetic is in ``credits.py`` (pure).

Every change of a customer's credits first locks the customer's row (after any invoice
lock), so two finalizations, a void and an expiry never read the same balance; every entry
has a unique key, so a replay or a retry after kill -9 writes nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from schemas import topics
from schemas.credits import GrantStatus
from schemas.envelope import CloudEvent, new_id
from schemas.invoicing import InvoiceFinalized, InvoicingConfig
from storage.invoicing import Customer, Invoice, InvoicingRepository
from storage.invoicing.credits import CreditGrant, CreditRepository
from workers.invoicing import credits, discounts, service, taxes, taxing, views
from workers.invoicing.lines import line_values
from workers.invoicing.taxes import Taxation
from workers.runtime import Tx


def emit(tx: Tx, event: CloudEvent, tenant_id: str, customer: str) -> None:
    tx.emit(event, topic=topics.EVENTS_INVOICING, key=topics.partition_key(tenant_id, customer))


def _envelope(tenant_id: str, cause: CloudEvent | None) -> dict[str, Any]:
    return cause.caused() if cause is not None else {"tenantid": tenant_id}


async def write_entries(
    tx: Tx,
    rows: Sequence[dict[str, Any]],
    grants: dict[str, CreditGrant],
    customer: str,
    cause: CloudEvent | None = None,
) -> list[Any]:
    """Append ``rows`` to the ledger and emit the event of each one written (with the
    grant's balance after it); rows written before are skipped."""
    if not rows:
        return []
    repo = tx.repo(CreditRepository)
    written = await repo.add_entries(rows)
    if not written:
        return []
    tenant = written[0].tenant_id
    balances = await repo.balances(tenant, {e.grant_id for e in written})
    after: dict[str, int] = {}
    for e in reversed(written):  # the balance after each entry, the last one's first
        after.setdefault(e.grant_id, balances.get(e.grant_id, 0))
    running = dict(after)
    out: list[tuple[Any, int]] = []
    for e in reversed(written):
        out.append((e, running[e.grant_id]))
        running[e.grant_id] -= e.amount
    for e, balance in reversed(out):
        if e.kind in credits.ENTRY_EVENTS and e.amount != 0:
            data = credits.entry_data(e, customer, grants[e.grant_id].currency, balance)
            emit(tx, credits.entry_event(data, **_envelope(tenant, cause)), tenant, customer)
    return written


async def grant_state(tx: Tx, row: CreditGrant, now: datetime) -> tuple[int, GrantStatus]:
    repo = tx.repo(CreditRepository)
    balance = (await repo.balances(row.tenant_id, [row.id])).get(row.id, 0)
    kinds = (await repo.kinds(row.tenant_id, [row.id])).get(row.id, set())
    return balance, credits.status(row, kinds, balance, now)


async def emit_grant(
    tx: Tx,
    row: CreditGrant,
    customer: str,
    now: datetime,
    cause: CloudEvent | None,
    *,
    voided: bool = False,
) -> None:
    balance, state = await grant_state(tx, row, now)
    data = credits.grant_data(row, customer, balance, state)
    emit(
        tx,
        credits.grant_event(voided, data, **_envelope(row.tenant_id, cause)),
        row.tenant_id,
        customer,
    )


# --- applying credits as a chunk of drafts is finalized --------------------------------


@dataclass
class Wallet:
    """The usable grants of the customers of one finalizing chunk (their rows locked), with
    balances that go down as invoices take from them."""

    as_of: datetime
    grants: dict[str, list[credits.Grant]] = field(default_factory=dict)  # by customer id
    rows: dict[str, CreditGrant] = field(default_factory=dict)  # by grant id
    # (customer id, ledger row, the grant's balance after it)
    entries: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)
    # by customer id: its commitments not trued up, with what is left of each
    commitments: dict[str, list[list[Any]]] = field(default_factory=dict)
    draws: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    async def open(cls, tx: Tx, customer_ids: set[str], as_of: datetime) -> Wallet:
        repo = tx.repo(CreditRepository)
        await repo.lock_customers(customer_ids)
        wallet = cls(as_of)
        for row, balance in await repo.usable(sorted(customer_ids), as_of):
            wallet.rows[row.id] = row
            wallet.grants.setdefault(row.customer_id, []).append(credits.grant_of(row, balance))
        for state in await repo.commitments(customer_ids):
            if not state.trued_up and state.left > 0:
                c = state.commitment
                wallet.commitments.setdefault(c.customer_id, []).append([c, state.left])
        return wallet

    def draw(self, invoice: dict[str, Any], spend: int) -> None:
        """The invoice's ``spend`` (its subtotal less discounts) draws down the customer's
        commitments whose term its period starts in (in the order they start), as far as
        each goes."""
        spend = max(spend, 0)
        for pair in self.commitments.get(invoice["customer_id"], []):
            c, left = pair
            if spend <= 0:
                break
            if c.currency != invoice["currency"] or not c.start <= invoice["period_start"] < c.end:
                continue
            amount = min(left, spend)
            if amount <= 0:
                continue
            pair[1] -= amount
            spend -= amount
            self.draws.append(commitment_entry(c, "drawn", -amount, self.as_of, invoice["id"]))

    def pay(
        self,
        invoice: dict[str, Any],
        lines: Sequence[service.Line],
        taxation: Decimal | Taxation | None,
        mode: str,
    ) -> list[service.Line]:
        """The credit lines of ``invoice`` (its charge ``lines``), in the documented order;
        records their ledger entries."""
        customer_id = invoice["customer_id"]
        mine = [
            g
            for g in self.grants.get(customer_id, [])
            if self.rows[g.id].currency == invoice["currency"]
        ]
        if not mine:
            return []
        payables = [
            credits.Payable(net, ln.price_key, ln.meter) for ln, net in discounts.net_charges(lines)
        ]
        if mode == service.AFTER_TAX:
            t = service.totals(lines, taxation, invoice["currency"], invoice["rounding"])
            payables.append(credits.Payable(t.tax - t.tax_inclusive))  # what tax adds
        paid = credits.allocate(mine, payables)
        taken = {g.id: amount for g, amount in paid}
        self.grants[customer_id] = [
            replace(g, balance=g.balance - taken.get(g.id, 0)) for g in self.grants[customer_id]
        ]
        out: list[service.Line] = []
        before = {g.id: g.balance for g in mine}
        for g, amount in paid:
            row = self.rows[g.id]
            out.append(
                credits.credit_line(
                    g.id, row.description, amount, invoice["period_start"], invoice["period_end"]
                )
            )
            self.entries.append(
                (
                    customer_id,
                    credits.entry(
                        row.tenant_id, g.id, customer_id, "applied", -amount, self.as_of,
                        credits.applied_key(g.id, invoice["id"]), invoice_id=invoice["id"],
                    ),
                    before[g.id] - amount,
                )
            )  # fmt: skip
        return out

    async def write(self, tx: Tx, customers: dict[str, Customer]) -> None:
        """Append the chunk's ledger entries (one statement) and emit ``credit.applied`` for
        each, with the grant's balance after it (known: the balances were read under the
        customers' locks)."""
        repo = tx.repo(CreditRepository)
        await repo.add_commitment_entries(self.draws)
        written = await repo.append_entries([row for _, row, _ in self.entries])
        for customer_id, row, balance in self.entries:
            if row["key"] not in written:
                continue
            customer = customers[customer_id].external_id
            data = credits.entry_data(row, customer, self.rows[row["grant_id"]].currency, balance)
            tenant = row["tenant_id"]
            emit(tx, credits.entry_event(data, tenantid=tenant), tenant, customer)


def commitment_entry(
    c: Any, kind: str, amount: int, at: datetime, invoice_id: str | None
) -> dict[str, Any]:
    """A commitment ledger row, keyed ``<kind>:<commitment>[:<invoice>]`` (written once)."""
    key = f"{kind}:{c.id}" + (f":{invoice_id}" if kind != "trued_up" else "")
    return {
        "tenant_id": c.tenant_id,
        "commitment_id": c.id,
        "kind": kind,
        "amount": amount,
        "invoice_id": invoice_id,
        "key": key,
        "at": at,
    }


# --- voiding an invoice returns its credits --------------------------------------------


async def return_credits(
    tx: Tx, invoice: Invoice, customer: Customer, at: datetime, cause: CloudEvent
) -> None:
    """``invoice`` was voided: each credit applied to it is returned to its grant; one that
    expired or was voided meanwhile expires again at once. A top-up invoice voided before it
    was paid voids its grant."""
    repo = tx.repo(CreditRepository)
    await repo.lock_customers([customer.id])
    top_up = await repo.grant_of_invoice(invoice.tenant_id, invoice.id)
    if top_up is not None:
        rows = [
            credits.entry(
                top_up.tenant_id, top_up.id, customer.id, "voided", 0, at,
                f"voided:{top_up.id}", invoice_id=invoice.id, reason="its invoice was voided",
            )
        ]  # fmt: skip
        if await repo.add_entries(rows):
            await emit_grant(tx, top_up, customer.external_id, at, cause, voided=True)
    applied = [
        e
        for e in await repo.entries_of_invoice(invoice.tenant_id, invoice.id)
        if e.kind == "applied"
    ]
    if not applied:
        return
    grants = {g.id: g for g in await repo.grants(invoice.tenant_id, [customer.id])}
    kinds = await repo.kinds(invoice.tenant_id, {e.grant_id for e in applied})
    rows = []
    for e in applied:
        g = grants[e.grant_id]
        when = max(at, e.at)  # never before the application it undoes (a run dated ahead)
        rows.append(
            credits.entry(
                e.tenant_id, e.grant_id, customer.id, "reversed", -e.amount, when,
                f"reversed:{e.grant_id}:{invoice.id}", invoice_id=invoice.id,
            )
        )  # fmt: skip
        gone = kinds.get(g.id, set()) & {"expired", "voided"} or (
            g.expires_at is not None and g.expires_at <= when
        )
        if gone:
            rows.append(
                credits.entry(
                    e.tenant_id, e.grant_id, customer.id, "expired", e.amount, when,
                    f"expired:{e.grant_id}:{invoice.id}", invoice_id=invoice.id,
                    reason="returned by a voided invoice after the grant ended",
                )
            )  # fmt: skip
    await write_entries(tx, rows, grants, customer.external_id, cause)


# --- top-ups -----------------------------------------------------------------------------


def one_off_line(kind: str, description: str, amount: int, at: datetime) -> service.Line:
    return service.Line(
        price_key=kind,
        kind=kind,
        description=description,
        meter=None,
        subject=None,
        period_start=at,
        period_end=at,
        quantity=Decimal(1),
        unit_price=None,
        tiers=(),
        proration=Decimal(1),
        minimum_applied=False,
        amount=amount,
    )


async def issue_invoice(
    tx: Tx,
    customer: Customer,
    line: service.Line,
    taxed: bool,
    config: InvoicingConfig,
    at: datetime,
    cause: CloudEvent | None,
) -> str:
    """An invoice of one ``line`` outside any subscription (a top-up, a commitment's
    true-up), numbered and finalized at once, collected like any other, taxed (``taxed``)
    at the customer's rates; returns its id."""
    repo = tx.repo(InvoicingRepository)
    tenant = customer.tenant_id
    party = taxing.party(customer)
    book = (await taxing.books(tx, {tenant: config}, share=True))[tenant]
    taxation = book.taxation(party) if taxed else Taxation()
    if taxed:
        (line,) = book.resolve([line], party)
    t = service.totals([line], taxation, customer.currency, config.rounding)
    (line,) = service.with_taxes([line], t)
    number = service.invoice_number(
        config.number_prefix, at.year, await repo.next_numbers(tenant, at.year, 1)
    )
    row: dict[str, Any] = {
        "id": new_id(),
        "tenant_id": tenant,
        "customer_id": customer.id,
        "subscription_id": None,
        "plan_id": None,
        "kind": line.kind,
        "status": "finalized",
        "number": number,
        "currency": customer.currency,
        "period_start": at,
        "period_end": at,
        "proration": Decimal(1),
        "subtotal": t.subtotal,
        "tax": t.tax,
        "tax_inclusive": t.tax_inclusive,
        "tax_breakdown": [a.model().model_dump(mode="json") for a in t.computed.breakdown],
        "tax_note": book.note(party) if taxed else None,
        "buyer": taxing.buyer(customer).model_dump(mode="json"),
        "total": t.total,
        "credits": 0,
        "amount_paid": 0,
        "tax_rate": party.tax_rate if taxed else None,
        "rounding": config.rounding,
        "finalize_after": at,
        "usage_offsets": None,
        "finalized_at": at,
        "due_at": at + timedelta(days=customer.net_terms_days),
    }
    await repo.insert_invoices([row], line_values(row["id"], tenant, [line]))
    book.used.update(taxes.used(t.computed))
    await taxing.mark_used(tx, {tenant: book}, at)
    view = service.invoice_data(row, customer.external_id, [line.model()])
    event = service.invoice_event(InvoiceFinalized, view, **_envelope(tenant, cause))
    emit(tx, event, tenant, customer.external_id)
    return str(row["id"])


async def issue_top_up(
    tx: Tx,
    grant: CreditGrant,
    customer: Customer,
    config: InvoicingConfig,
    at: datetime,
    cause: CloudEvent | None,
) -> str:
    """The invoice of a top-up; returns its id. After tax (the default), buying credit is a
    payment on account and carries no tax; before tax, the credit reduces taxable amounts
    later, so its purchase is taxed."""
    assert grant.purchase_amount is not None
    line = one_off_line(
        "top_up", grant.description or f"Prepaid credit {grant.id}", grant.purchase_amount, at
    )
    taxed = config.credits_apply == service.BEFORE_TAX
    return await issue_invoice(tx, customer, line, taxed, config, at, cause)


async def true_up(tx: Tx, commitments: Sequence[Any], now: datetime) -> int:
    """Commitments whose term is over and whose invoices are all final: what was not drawn
    is invoiced as a shortfall true-up (taxed like the usage it stands for); returns how
    many were settled (a commitment fully drawn is settled with an entry of 0)."""
    repo = tx.repo(CreditRepository)
    invoicing = tx.repo(InvoicingRepository)
    customers = await invoicing.customers({c.customer_id for c in commitments})
    await repo.lock_customers(customers)
    states = {
        (s.commitment.tenant_id, s.commitment.id): s for s in await repo.commitments(customers)
    }
    configs = await invoicing.configs({c.tenant_id for c in commitments})
    done = 0
    for c in commitments:
        state = states[(c.tenant_id, c.id)]
        if state.trued_up:
            continue  # another replica settled it first
        shortfall = max(state.left, 0)
        customer = customers[c.customer_id]
        invoice_id = None
        if shortfall:
            description = c.description or f"Commitment {c.id}"
            line = one_off_line("true_up", f"{description} — shortfall true-up", shortfall, now)
            config = views.config_of(configs.get(c.tenant_id))
            invoice_id = await issue_invoice(tx, customer, line, True, config, now, None)
        done += await repo.add_commitment_entries(
            [commitment_entry(c, "trued_up", -shortfall, now, invoice_id)]
        )
    return done


async def top_up_paid(
    tx: Tx, invoice: Invoice, customer: Customer, at: datetime, cause: CloudEvent
) -> None:
    """A top-up's invoice was paid: its grant takes effect (once)."""
    repo = tx.repo(CreditRepository)
    grant = await repo.grant_of_invoice(invoice.tenant_id, invoice.id)
    if grant is None:
        return
    await repo.lock_customers([customer.id])
    rows = [
        credits.entry(
            grant.tenant_id, grant.id, customer.id, "topped_up", grant.amount,
            max(at, grant.effective_at), f"granted:{grant.id}", invoice_id=invoice.id,
        )
    ]  # fmt: skip
    if grant.expires_at is not None and grant.expires_at <= at:
        rows.append(
            credits.entry(
                grant.tenant_id, grant.id, customer.id, "expired", -grant.amount,
                max(at, grant.effective_at), f"expired:{grant.id}:late",
                reason="paid after its expiry",
            )
        )  # fmt: skip
    if await repo.add_entries(rows[:1]):
        await emit_grant(tx, grant, customer.external_id, at, cause)
        await write_entries(tx, rows[1:], {grant.id: grant}, customer.external_id, cause)


# --- expiry ------------------------------------------------------------------------------


async def expire(tx: Tx, grants: Sequence[CreditGrant], now: datetime) -> int:
    """Expire ``grants`` (their expiry has come): what is left of each goes, at exactly its
    ``expires_at``, and rolls over into a new grant where the grant says so."""
    repo = tx.repo(CreditRepository)
    invoicing = tx.repo(InvoicingRepository)
    customers = await invoicing.customers({g.customer_id for g in grants})
    await repo.lock_customers(customers)
    done = 0
    for tenant in sorted({g.tenant_id for g in grants}):
        mine = [g for g in grants if g.tenant_id == tenant]
        balances = await repo.balances(tenant, [g.id for g in mine])
        for g in mine:
            assert g.expires_at is not None
            left = balances.get(g.id, 0)
            customer = customers[g.customer_id]
            row = credits.entry(
                tenant, g.id, g.customer_id, "expired", -left, g.expires_at, f"expired:{g.id}"
            )
            if not await write_entries(tx, [row], {g.id: g}, customer.external_id):
                continue  # another replica expired it first
            done += 1
            rolled = credits.rollover_grant(g, left)
            if rolled is not None:
                new = await repo.add_grant(**rolled)
                assert new is not None
                granted = credits.entry(
                    tenant,
                    new.id,
                    new.customer_id,
                    "granted",
                    new.amount,
                    new.effective_at,
                    f"granted:{new.id}",
                )
                await repo.add_entries([granted])
                await emit_grant(tx, new, customer.external_id, now, None)
    return done
