"""Alerts: rules evaluated against usage totals, spend and operational events."""
