"""Taxes where they touch the database: a tenant's ``Book`` (its rate versions and
settings), a customer as a ``Party`` and as the invoice's ``Buyer``, and the versions a
finalized invoice used (immutable from then on). The arithmetic is in ``taxes.py``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal

from schemas.invoicing import InvoicingConfig
from schemas.taxes import Buyer, TaxId, parse_factor
from storage.invoicing import Customer
from storage.invoicing.taxes import TaxRateRepository, TaxRateRow
from workers.invoicing import taxes
from workers.invoicing.errors import NotFound
from workers.runtime import Tx


def version(row: TaxRateRow) -> taxes.Version:
    rate = taxes.Rate(
        name=row.name,
        display_name=row.display_name,
        percentage=Decimal(row.percentage),
        inclusive=row.inclusive,
        base=parse_factor(row.taxable_base_factor),
        id=row.id,
        country=row.country,
        jurisdiction=row.jurisdiction,
    )
    return taxes.Version(rate, row.effective_from, row.effective_until)


def book(rows: Iterable[TaxRateRow], config: InvoicingConfig) -> taxes.Book:
    catalog: dict[str, list[taxes.Version]] = {}
    for row in rows:
        catalog.setdefault(row.name, []).append(version(row))
    return taxes.Book(
        catalog=catalog,
        default=tuple(config.tax_rates),
        rounding=config.tax_rounding,
        notes={"exempt": config.exempt_note, "reverse_charge": config.reverse_charge_note},
    )


async def books(
    tx: Tx, configs: Mapping[str, InvoicingConfig], *, share: bool = False
) -> dict[str, taxes.Book]:
    """The ``Book`` of each tenant of ``configs``; ``share``: its rates locked against change
    until the transaction ends (finalizing: what it uses becomes immutable)."""
    catalog = await tx.repo(TaxRateRepository).catalog(configs, share=share)
    return {t: book(catalog[t], config) for t, config in configs.items()}


def party(customer: Customer) -> taxes.Party:
    status = customer.tax_status or ("exempt" if customer.tax_exempt else "taxable")
    return taxes.Party(
        names=None if customer.tax_rates is None else tuple(customer.tax_rates),
        bare=None if customer.tax_rate is None else Decimal(customer.tax_rate),
        status=status,  # type: ignore[arg-type]
    )


def buyer(customer: Customer) -> Buyer:
    return Buyer(
        name=customer.name,
        email=customer.email,
        tax_ids=[TaxId.model_validate(t) for t in customer.tax_ids or []],
        billing_address=customer.billing_address,
        tax_status=party(customer).status,
        locale=customer.locale,
    )


async def mark_used(tx: Tx, books: Mapping[str, taxes.Book], at: datetime) -> None:
    """The versions the books' invoices were finalized with are immutable from now on."""
    repo = tx.repo(TaxRateRepository)
    for tenant, b in sorted(books.items()):
        await repo.mark_used(tenant, b.used, at)


async def check_names(tx: Tx, tenant: str, names: Mapping[str, Iterable[str] | None]) -> None:
    """Every rate named (``names``: where -> the names given there) exists in some
    version: else the command fails, naming the field."""
    if not any(names.values()):
        return
    known = {r.name for r in (await tx.repo(TaxRateRepository).catalog([tenant]))[tenant]}
    for where, given in names.items():
        for i, name in enumerate(given or ()):
            if name not in known:
                raise NotFound(f"no tax rate is named {name!r}", field=f"{where}[{i}]")
