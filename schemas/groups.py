"""Consumer-group names are a contract too: a group's committed offsets are where its
context resumes, and ``billstream lag``/``replay`` and the billing cut-off name them.
Every group billstream consumes in is named here, beside the topics it reads
(schemas/topics.py)."""

from __future__ import annotations

METERING_USAGE = "billstream.metering"
METERING_COMMANDS = "billstream.metering.commands"

POS_RECEIPTS = "billstream.pos"
POS_COMMANDS = "billstream.pos.commands"

INVOICING_COMMANDS = "billstream.invoicing.commands"
INVOICING_PAYMENTS = "billstream.invoicing.payments"

PAYMENTS_INVOICES = "billstream.payments.invoices"
PAYMENTS_COMMANDS = "billstream.payments.commands"
PAYMENTS_STRIPE = "billstream.payments.stripe"

ALERTS_USAGE = "billstream.alerts.usage"
ALERTS_OPERATIONS = "billstream.alerts.operations"
ALERTS_DEAD_LETTERS = "billstream.alerts.dead-letters"
ALERTS_COMMANDS = "billstream.alerts.commands"

RECEIPTS_DOCUMENTS = "billstream.receipts.documents"
RECEIPTS_COMMANDS = "billstream.receipts.commands"

ENTITLEMENTS_EVENTS = "billstream.entitlements.events"  # invoicing and payments events
ENTITLEMENTS_USAGE = "billstream.entitlements.usage"  # usage.totals_changed
ENTITLEMENTS_COMMANDS = "billstream.entitlements.commands"

DOCUMENTS_INVOICES = "billstream.documents.invoices"  # invoice.finalized
DOCUMENTS_COMMANDS = "billstream.documents.commands"

PARTNERS_INVOICING = "billstream.partners.invoicing"  # invoice.paid, credit notes, subscriptions
PARTNERS_PAYMENTS = "billstream.partners.payments"  # payment.refunded
PARTNERS_COMMANDS = "billstream.partners.commands"

WEBHOOKS_COMMANDS = "billstream.webhooks.commands"
WEBHOOKS_FANOUT_PREFIX = "billstream.webhooks.fanout"


def webhooks_fanout(topic: str) -> str:
    """The webhooks fan-out group of one events topic (``billstream.webhooks.fanout.<context>``)."""
    return f"{WEBHOOKS_FANOUT_PREFIX}.{topic.split('.')[2]}"
