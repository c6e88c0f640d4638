"""Outbound webhooks: endpoints, signed deliveries (Standard Webhooks), durable retries."""
