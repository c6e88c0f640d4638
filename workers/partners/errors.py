from __future__ import annotations

from workers.runtime.errors import BillstreamError, PermanentError


class PartnersError(BillstreamError):
    code = "partners_error"


class NotFound(PartnersError, PermanentError):
    """An unknown partner or statement named by a command."""

    code = "not_found"


class PeriodNotEnded(PartnersError, PermanentError):
    code = "period_not_ended"


class PayoutTooLarge(PartnersError, PermanentError):
    code = "payout_exceeds_payable"


class PayoutConflict(PartnersError, PermanentError):
    """A payout id used again for another statement or amount."""

    code = "payout_conflict"
