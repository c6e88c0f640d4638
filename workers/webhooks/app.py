"""The webhooks worker process: fan-out consumers, the command handler, and the dispatch
job (its claim and record loops)."""

from __future__ import annotations

import random
import ssl
from datetime import timedelta

from workers.runtime import Runtime
from workers.runtime.app import Worker, build_worker
from workers.settings import Settings
from workers.webhooks import handlers, ssrf
from workers.webhooks.commands import Context
from workers.webhooks.delivery import Deliverer
from workers.webhooks.domain import Clock, RetryPolicy, utc_now
from workers.webhooks.jobs import Dispatcher


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        schedule=tuple(settings.webhook_retry_schedule_s),
        jitter=settings.webhook_retry_jitter,
        disable_after=timedelta(seconds=settings.webhook_disable_after_s),
    )


def register(
    runtime: Runtime,
    settings: Settings,
    *,
    clock: Clock = utc_now,
    rng: random.Random | None = None,
    resolver: ssrf.Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
) -> Dispatcher:
    """Registers the consumers and the dispatch job on ``runtime``; returns the dispatcher
    (tests wake it and count its claim passes)."""
    policy = ssrf.Policy.of(settings.webhook_allowed_networks, resolver)
    deliverer = Deliverer(
        policy,
        timeout_s=settings.webhook_timeout_s,
        clock=clock,
        concurrency=settings.webhook_concurrency,
        verify=verify,
    )
    dispatcher = Dispatcher(
        runtime,
        deliverer,
        retry_policy(settings),
        clock=clock,
        rng=rng or random.Random(),
        concurrency=settings.webhook_concurrency,
        claim_batch=settings.webhook_claim_batch,
        poll_interval_s=settings.webhook_poll_interval_s,
        lease=timedelta(seconds=settings.webhook_timeout_s + 60),
        grace_s=settings.graceful_timeout_s,
    )
    context = Context(
        clock=clock,
        policy=policy,
        secret_overlap=timedelta(seconds=settings.webhook_secret_overlap_s),
        wake=dispatcher.wake,
    )
    handlers.register(runtime, context)
    return dispatcher


def build(
    settings: Settings,
    *,
    clock: Clock = utc_now,
    rng: random.Random | None = None,
    resolver: ssrf.Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
) -> Worker:
    """The worker; ``clock``, ``rng``, ``resolver`` and ``verify`` are for tests."""

    def register_all(runtime: Runtime) -> None:
        register(runtime, settings, clock=clock, rng=rng, resolver=resolver, verify=verify)

    return build_worker("webhooks", settings, register_all)
