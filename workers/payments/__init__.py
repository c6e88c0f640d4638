"""The payments context: Stripe collection, verified Stripe webhooks, dunning, refunds."""
