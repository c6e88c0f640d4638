"""Alerts: rules evaluated against usage totals, spend and operational events.

The face: what other packages (the ingress) may import of this context."""

from __future__ import annotations

from workers.alerts.views import AlertRuleView, alert_data, rule_view, spec_of

__all__ = ["AlertRuleView", "alert_data", "rule_view", "spec_of"]
