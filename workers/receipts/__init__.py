"""Receipts: signed, hash-chained receipts of every finalized invoice, issued credit note,
succeeded payment and refund, one chain per tenant and customer (docs/receipts.md).

Its face: what other packages may import (an import-linter contract enforces it) — the
views the ingress answers with, and the offline verifier the CLI runs."""

from workers.receipts.service import (
    KeyPair,
    b64url,
    credit_note_content,
    invoice_content,
    new_key,
    payment_content,
    private_key,
    refund_content,
)
from workers.receipts.verify import Failure, KeysError, Report, parse_keys, verify_export
from workers.receipts.views import export_line, jwks, receipt_data

__all__ = [
    "Failure",
    "KeyPair",
    "KeysError",
    "Report",
    "b64url",
    "credit_note_content",
    "export_line",
    "invoice_content",
    "jwks",
    "new_key",
    "parse_keys",
    "payment_content",
    "private_key",
    "receipt_data",
    "refund_content",
    "verify_export",
]
