"""The words of the hosted invoice page and the portal: documents' labels (the PDF's words,
``workers.documents.LABELS``) and the few only the pages use, in every locale."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from schemas.locales import Locale
from workers import documents

_PAGES: Mapping[Locale, Mapping[str, str]] = {
    "en": {
        "skip": "Skip to content",
        "portal": "Billing",
        "portal_intro": "Your subscription, usage, invoices and payment method.",
        "pdf_pending": "The PDF is being prepared",
        "pdf_pending_detail": "This invoice's PDF is not ready yet. Try again in a moment.",
        "card_note": "Card details go straight to Stripe.",
        "card_saved": "Your card is saved. Thank you!",
        "still_processing": "This is taking longer than usual. Reload the page in a minute.",
        "daily_numbers": "Daily numbers",
        "pending_usage": "Usage not invoiced yet",
        "projected": "Projected",
        "actions": "Actions",
        "card_on_file": "A card is on file. A new card replaces it for future payments.",
        "save_card": "Save card",
        "link_invalid_detail": "Ask the sender for a new link.",
        "not_found": "Not found",
        "not_found_detail": "There is nothing here for this link.",
        "unavailable": "Temporarily unavailable",
        "unavailable_detail": "This page cannot be shown right now. Try again shortly.",
        "sub_active": "Active",
        "sub_ended": "Ended",
        "cancels_at_end": "Ends at the end of this period",
        "access_yes": "Included",
        "access_no": "Not included",
        "chart_label": "{name}: {days} days; highest {value} on {day}",
        "chart_empty": "{name}: no usage",
    },
    "id": {
        "skip": "Langsung ke konten",
        "portal": "Tagihan",
        "portal_intro": "Langganan, pemakaian, faktur, dan metode pembayaran Anda.",
        "pdf_pending": "PDF sedang disiapkan",
        "pdf_pending_detail": "PDF faktur ini belum siap. Coba lagi sebentar lagi.",
        "card_note": "Data kartu langsung dikirim ke Stripe.",
        "card_saved": "Kartu Anda tersimpan. Terima kasih!",
        "still_processing": "Prosesnya lebih lama dari biasa. Muat ulang halaman sebentar lagi.",
        "daily_numbers": "Angka harian",
        "pending_usage": "Pemakaian yang belum ditagih",
        "projected": "Perkiraan",
        "actions": "Tindakan",
        "card_on_file": "Sudah ada kartu tersimpan. Kartu baru akan menggantikannya.",
        "save_card": "Simpan kartu",
        "link_invalid_detail": "Mintalah tautan baru kepada pengirim.",
        "not_found": "Tidak ditemukan",
        "not_found_detail": "Tidak ada apa pun untuk tautan ini.",
        "unavailable": "Sementara tidak tersedia",
        "unavailable_detail": "Halaman ini tidak dapat ditampilkan sekarang. Coba lagi nanti.",
        "sub_active": "Aktif",
        "sub_ended": "Berakhir",
        "cancels_at_end": "Berakhir di akhir periode ini",
        "access_yes": "Termasuk",
        "access_no": "Tidak termasuk",
        "chart_label": "{name}: {days} hari; tertinggi {value} pada {day}",
        "chart_empty": "{name}: tidak ada pemakaian",
    },
}


@cache
def labels(locale: Locale) -> Mapping[str, str]:
    """Every word a page shows, in ``locale``."""
    return {**documents.LABELS[locale], **_PAGES[locale]}
