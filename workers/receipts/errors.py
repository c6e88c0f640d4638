from __future__ import annotations

from workers.runtime.errors import BillstreamError, PermanentError, RetryableError


class ReceiptsError(BillstreamError):
    code = "receipts_error"


class KeysChanging(ReceiptsError, RetryableError):
    """The tenant's current key changed while it was being read (a rotation): try again."""

    code = "receipt_keys_changing"


class TooManyKeys(ReceiptsError, PermanentError):
    code = "too_many_receipt_keys"
