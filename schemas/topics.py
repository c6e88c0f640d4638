"""Topic names are a contract: every topic billstream reads or writes is named here."""

from __future__ import annotations

from dataclasses import dataclass

USAGE = "billstream.usage.v1"
COMMANDS_METERING = "billstream.commands.metering.v1"
EVENTS_METERING = "billstream.events.metering.v1"
COMMANDS_INVOICING = "billstream.commands.invoicing.v1"
EVENTS_INVOICING = "billstream.events.invoicing.v1"
COMMANDS_PAYMENTS = "billstream.commands.payments.v1"
EVENTS_PAYMENTS = "billstream.events.payments.v1"
INTEGRATIONS_STRIPE = "billstream.integrations.stripe.v1"
COMMANDS_WEBHOOKS = "billstream.commands.webhooks.v1"
EVENTS_WEBHOOKS = "billstream.events.webhooks.v1"
INTEGRATIONS_POS = "billstream.integrations.pos.v1"
COMMANDS_POS = "billstream.commands.pos.v1"
EVENTS_OPS = "billstream.events.ops.v1"
COMMANDS_ALERTS = "billstream.commands.alerts.v1"
EVENTS_ALERTS = "billstream.events.alerts.v1"
COMMANDS_RECEIPTS = "billstream.commands.receipts.v1"
EVENTS_RECEIPTS = "billstream.events.receipts.v1"
COMMANDS_ENTITLEMENTS = "billstream.commands.entitlements.v1"
EVENTS_ENTITLEMENTS = "billstream.events.entitlements.v1"
COMMANDS_DOCUMENTS = "billstream.commands.documents.v1"
EVENTS_DOCUMENTS = "billstream.events.documents.v1"
COMMANDS_PARTNERS = "billstream.commands.partners.v1"
EVENTS_PARTNERS = "billstream.events.partners.v1"

DLQ_SUFFIX = ".dlq"


def partition_key(tenant_id: str, *scope: str) -> str:
    """The record key every billstream message is written under: ``tenant_id`` alone, or
    ``tenant_id:customer_id`` for what is customer-scoped (``tenant_id:endpoint_id`` for
    webhook deliveries), so one customer's commands and events stay ordered in one partition.
    The one spelling of it (ARCHITECTURE.md §2)."""
    return ":".join((tenant_id, *scope))


def dlq(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    written_by: str
    read_by: str
    dead_letter: bool = True


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(USAGE, "tenant_id:subject", "ingress, or producers directly", "metering"),
    TopicSpec(COMMANDS_METERING, "tenant_id", "ingress, CLI", "metering"),
    TopicSpec(EVENTS_METERING, "tenant_id", "metering (outbox)", "anyone downstream"),
    TopicSpec(COMMANDS_INVOICING, "tenant_id:customer_id", "ingress, CLI", "invoicing"),
    TopicSpec(EVENTS_INVOICING, "tenant_id:customer_id", "invoicing (outbox)", "payments, anyone"),
    TopicSpec(COMMANDS_PAYMENTS, "tenant_id:customer_id", "ingress, CLI", "payments"),
    TopicSpec(EVENTS_PAYMENTS, "tenant_id:customer_id", "payments (outbox)", "invoicing, anyone"),
    TopicSpec(INTEGRATIONS_STRIPE, "tenant_id:stripe_customer", "ingress (verified)", "payments"),
    TopicSpec(COMMANDS_WEBHOOKS, "tenant_id:endpoint_id", "ingress, CLI", "webhooks"),
    TopicSpec(EVENTS_WEBHOOKS, "tenant_id:endpoint_id", "webhooks (outbox)", "anyone downstream"),
    TopicSpec(INTEGRATIONS_POS, "tenant_id:location", "ingress (POS receipts)", "pos"),
    TopicSpec(COMMANDS_POS, "tenant_id", "ingress, CLI", "pos"),
    TopicSpec(
        EVENTS_OPS, "tenantid or *", "CLI (audit), any worker (quarantine)", "alerts, auditors"
    ),
    TopicSpec(COMMANDS_ALERTS, "tenant_id", "ingress, CLI", "alerts"),
    TopicSpec(EVENTS_ALERTS, "tenant_id", "alerts (outbox)", "webhooks, anyone downstream"),
    TopicSpec(COMMANDS_RECEIPTS, "tenant_id", "ingress, CLI", "receipts"),
    TopicSpec(
        EVENTS_RECEIPTS, "tenant_id:customer_id", "receipts (outbox)", "webhooks, anyone downstream"
    ),
    TopicSpec(
        COMMANDS_ENTITLEMENTS,
        "tenant_id (features, plans, config) or tenant_id:customer_id",
        "ingress",
        "entitlements",
    ),
    TopicSpec(
        EVENTS_ENTITLEMENTS,
        "tenant_id:customer_id",
        "entitlements (outbox)",
        "webhooks, anyone downstream",
    ),
    TopicSpec(COMMANDS_DOCUMENTS, "tenant_id", "ingress", "documents"),
    TopicSpec(
        EVENTS_DOCUMENTS,
        "tenant_id:customer_id",
        "documents (outbox)",
        "webhooks, anyone downstream",
    ),
    TopicSpec(COMMANDS_PARTNERS, "tenant_id", "ingress", "partners"),
    TopicSpec(
        EVENTS_PARTNERS,
        "tenant_id:partner_id",
        "partners (outbox)",
        "webhooks, anyone downstream",
    ),
)


def all_topic_names() -> list[str]:
    """Every topic, with the dead-letter topics, as ``billstream topics ensure`` creates them."""
    names: list[str] = []
    for spec in TOPICS:
        names.append(spec.name)
        if spec.dead_letter:
            names.append(dlq(spec.name))
    return names
