"""Invoicing errors: each fails its command with a code and, where it applies, the field."""

from __future__ import annotations

from workers.runtime.errors import BillstreamError, PermanentError


class InvoicingError(BillstreamError):
    code = "invoicing_error"


class NotFound(InvoicingError, PermanentError):
    """An unknown customer, plan, subscription or invoice."""

    code = "not_found"


class Conflict(InvoicingError, PermanentError):
    """The command contradicts what exists: a different plan under the same key, an
    overlapping subscription, a currency mismatch, a customer's currency change."""

    code = "conflict"


class InvalidTransition(InvoicingError, PermanentError):
    code = "invalid_transition"


class AmountOutOfRange(InvoicingError, PermanentError):
    """An invoice amount too large to store (beyond a signed 64-bit count of minor units):
    the subscription or draft is quarantined, never half-billed."""

    code = "amount_out_of_range"


class TaxRatesMixed(InvoicingError, PermanentError):
    """A line's rates mix inclusive and exclusive ones."""

    code = "tax_rates_mixed"


class TaxRateNotInForce(InvoicingError, PermanentError):
    """A rate named for a line has no version in force in the line's period: the draft is
    quarantined, never billed without its tax."""

    code = "tax_rate_not_in_force"
