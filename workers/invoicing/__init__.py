"""Invoicing: plans, subscriptions, billing runs, invoices."""
