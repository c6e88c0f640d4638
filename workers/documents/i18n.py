"""The words of invoices, hosted invoice pages and the portal, in every locale of
``schemas.locales`` (``en``, ``id``).

``label(key, locale)`` is one word or phrase; ``LABELS[locale]`` is the whole table (a dict
to hand a template: ``{{ t.amount_due }}``). Phrases with a value in them use
``str.format`` fields (``label("page_of", "id").format(page=1, total=3)``).
Every locale has every key (a test checks it).

``payment_state(invoice, at)`` is what an invoice's status means to the customer, one of
``PaymentState``; its words are ``label("state_" + state, locale)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from schemas.invoicing import InvoiceData
from schemas.locales import Locale

PaymentState = Literal["draft", "due", "overdue", "paid", "void", "uncollectible"]

_EN: dict[str, str] = {
    # the document
    "invoice": "Invoice",
    "invoice_number": "Invoice number",
    "issue_date": "Issue date",
    "due_date": "Due date",
    "period": "Billing period",
    "bill_to": "Bill to",
    "from": "From",
    "tax_id": "Tax ID",
    "email": "Email",
    "website": "Website",
    "customer_id": "Customer ID",
    # the lines
    "description": "Description",
    "quantity": "Qty",
    "unit_price": "Unit price",
    "amount": "Amount",
    "tier": "Tier {tier}",
    "flat_fee": "flat fee {amount}",
    "adjusts": "Late usage for {period}",
    "applies_to": "on line {line}",
    "kind_discount": "Discount",
    "kind_credit": "Credit",
    "kind_adjustment": "Adjustment",
    "minimum_applied": "Minimum spend applied",
    "proration": "Prorated: {share} of the period",
    # totals
    "subtotal": "Subtotal",
    "discount": "Discount",
    "credits": "Credits",
    "tax": "Tax",
    "tax_included": "Tax included in prices",
    "total": "Total",
    "amount_paid": "Paid",
    "amount_credited": "Credit notes",
    "amount_refunded": "Refunded",
    "amount_due": "Amount due",
    "due_by": "Due {date}",
    # taxes
    "tax_summary": "Tax summary",
    "tax_kind": "Tax",
    "tax_rate": "Rate",
    "tax_amount": "Amount",
    "taxable_amount": "Taxable amount",
    "taxable_base": "Tax base",
    "inclusive": "incl.",
    "exempt": "Exempt",
    "reverse_charge": "Reverse charge",
    # payment
    "pay_invoice": "Pay this invoice",
    "pay_online": "Pay online or view this invoice",
    "scan_to_pay": "Scan to view and pay",
    "download_pdf": "Download PDF",
    "memo": "Notes",
    "page_of": "Page {page} of {total}",
    "status": "Status",
    "state_draft": "Draft",
    "state_due": "Due",
    "state_overdue": "Overdue",
    "state_paid": "Paid",
    "state_void": "Void",
    "state_uncollectible": "Uncollectible",
    # pages and the portal
    "invoices": "Invoices",
    "usage": "Usage",
    "balance": "Balance",
    "credit_balance": "Credit balance",
    "entitlements": "Entitlements",
    "subscription": "Subscription",
    "plan": "Plan",
    "current_period": "Current period",
    "payment_method": "Payment method",
    "update_payment_method": "Update payment method",
    "pay": "Pay",
    "paying": "Paying…",
    "payment_succeeded": "Payment received. Thank you!",
    "payment_failed": "The payment did not go through",
    "card": "Card",
    "back": "Back",
    "date": "Date",
    "number": "Number",
    "meter": "Meter",
    "no_invoices": "No invoices yet",
    "no_usage": "No usage in this period",
    "link_invalid": "This link is not valid or has expired",
    "powered_by": "Billing by billstream",
}

_ID: dict[str, str] = {
    "invoice": "Faktur",
    "invoice_number": "Nomor faktur",
    "issue_date": "Tanggal faktur",
    "due_date": "Jatuh tempo",
    "period": "Periode tagihan",
    "bill_to": "Ditagihkan kepada",
    "from": "Dari",
    "tax_id": "Nomor pajak",
    "email": "Email",
    "website": "Situs web",
    "customer_id": "ID pelanggan",
    "description": "Deskripsi",
    "quantity": "Jml",
    "unit_price": "Harga satuan",
    "amount": "Jumlah",
    "tier": "Tingkat {tier}",
    "flat_fee": "biaya tetap {amount}",
    "adjusts": "Pemakaian terlambat untuk {period}",
    "applies_to": "atas baris {line}",
    "kind_discount": "Diskon",
    "kind_credit": "Kredit",
    "kind_adjustment": "Penyesuaian",
    "minimum_applied": "Pembelian minimum diterapkan",
    "proration": "Prorata: {share} dari periode",
    "subtotal": "Subtotal",
    "discount": "Diskon",
    "credits": "Kredit",
    "tax": "Pajak",
    "tax_included": "Pajak sudah termasuk dalam harga",
    "total": "Total",
    "amount_paid": "Dibayar",
    "amount_credited": "Nota kredit",
    "amount_refunded": "Dikembalikan",
    "amount_due": "Jumlah terutang",
    "due_by": "Jatuh tempo {date}",
    "tax_summary": "Ringkasan pajak",
    "tax_kind": "Jenis pajak",
    "tax_rate": "Tarif",
    "tax_amount": "Jumlah pajak",
    "taxable_amount": "Dasar pengenaan",
    "taxable_base": "DPP",
    "inclusive": "termasuk",
    "exempt": "Dibebaskan",
    "reverse_charge": "Pembalikan pajak",
    "pay_invoice": "Bayar faktur ini",
    "pay_online": "Bayar atau lihat faktur ini secara daring",
    "scan_to_pay": "Pindai untuk melihat dan membayar",
    "download_pdf": "Unduh PDF",
    "memo": "Catatan",
    "page_of": "Halaman {page} dari {total}",
    "status": "Status",
    "state_draft": "Draf",
    "state_due": "Belum dibayar",
    "state_overdue": "Lewat jatuh tempo",
    "state_paid": "Lunas",
    "state_void": "Dibatalkan",
    "state_uncollectible": "Tidak tertagih",
    "invoices": "Faktur",
    "usage": "Pemakaian",
    "balance": "Saldo",
    "credit_balance": "Saldo kredit",
    "entitlements": "Hak akses",
    "subscription": "Langganan",
    "plan": "Paket",
    "current_period": "Periode berjalan",
    "payment_method": "Metode pembayaran",
    "update_payment_method": "Perbarui metode pembayaran",
    "pay": "Bayar",
    "paying": "Memproses…",
    "payment_succeeded": "Pembayaran diterima. Terima kasih!",
    "payment_failed": "Pembayaran tidak berhasil",
    "card": "Kartu",
    "back": "Kembali",
    "date": "Tanggal",
    "number": "Nomor",
    "meter": "Meteran",
    "no_invoices": "Belum ada faktur",
    "no_usage": "Tidak ada pemakaian pada periode ini",
    "link_invalid": "Tautan ini tidak valid atau sudah kedaluwarsa",
    "powered_by": "Penagihan oleh billstream",
}

LABELS: Mapping[Locale, Mapping[str, str]] = MappingProxyType(
    {"en": MappingProxyType(_EN), "id": MappingProxyType(_ID)}
)
"""Every label, per locale (read-only)."""


def label(key: str, locale: Locale) -> str:
    """The words for ``key`` in ``locale``; KeyError for a key no locale has."""
    return LABELS[locale][key]


def payment_state(invoice: InvoiceData, at: datetime) -> PaymentState:
    """What ``invoice``'s status means to its customer at ``at``: a finalized invoice with
    nothing left to pay is paid (its credits or payments covered it), one past its due date
    is overdue."""
    if invoice.status == "finalized":
        if invoice.amount_due <= 0:
            return "paid"
        if invoice.due_at is not None and at >= invoice.due_at:
            return "overdue"
        return "due"
    return invoice.status
