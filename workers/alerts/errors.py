from __future__ import annotations

from workers.runtime.errors import BillstreamError, PermanentError, RetryableError


class AlertsError(BillstreamError):
    code = "alerts_error"


class AlertsRetryableError(AlertsError, RetryableError):
    pass


class RuleConflict(AlertsError, PermanentError):
    code = "rule_conflict"


class RuleNotFound(AlertsError, PermanentError):
    code = "rule_not_found"


class AlertNotFound(AlertsError, PermanentError):
    code = "alert_not_found"
