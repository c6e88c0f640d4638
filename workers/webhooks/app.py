"""The webhooks worker process: fan-out consumers, command handler, and the dispatcher."""

from __future__ import annotations

import random
import ssl
from dataclasses import dataclass, fields
from datetime import timedelta

from workers.runtime.app import Worker, build_worker
from workers.settings import Settings
from workers.webhooks import handlers, ssrf
from workers.webhooks.delivery import Deliverer
from workers.webhooks.dispatcher import Dispatcher
from workers.webhooks.service import Clock, RetryPolicy, utc_now


@dataclass
class WebhookWorker(Worker):
    dispatcher: Dispatcher | None = None

    async def start(self) -> None:
        await super().start()
        assert self.dispatcher is not None
        self.dispatcher.start()

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop(grace_s=self.settings.graceful_timeout_s)
            await self.dispatcher.deliverer.close()
        await super().stop()


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        schedule=tuple(settings.webhook_retry_schedule_s),
        jitter=settings.webhook_retry_jitter,
        disable_after=timedelta(seconds=settings.webhook_disable_after_s),
    )


def build(
    settings: Settings,
    *,
    clock: Clock = utc_now,
    rng: random.Random | None = None,
    resolver: ssrf.Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
) -> WebhookWorker:
    """The worker; ``clock``, ``rng``, ``resolver`` and ``verify`` are for tests."""
    rng = rng or random.Random()
    policy = ssrf.Policy.of(settings.webhook_allowed_networks, resolver)
    retry = retry_policy(settings)
    wake: list[Dispatcher] = []
    context = handlers.Context(
        clock=clock,
        rng=rng,
        policy=policy,
        retry=retry,
        secret_overlap=timedelta(seconds=settings.webhook_secret_overlap_s),
        wake=lambda: wake[0].wake() if wake else None,
    )
    base = build_worker("webhooks", settings, lambda runtime: handlers.register(runtime, context))
    deliverer = Deliverer(
        policy,
        timeout_s=settings.webhook_timeout_s,
        clock=clock,
        concurrency=settings.webhook_concurrency,
        verify=verify,
    )
    dispatcher = Dispatcher(
        base.runtime.jobs,
        deliverer,
        retry,
        clock=clock,
        rng=rng,
        concurrency=settings.webhook_concurrency,
        claim_batch=settings.webhook_claim_batch,
        poll_interval_s=settings.webhook_poll_interval_s,
        lease=timedelta(seconds=settings.webhook_timeout_s + 60),
    )
    wake.append(dispatcher)
    worker = WebhookWorker(
        **{f.name: getattr(base, f.name) for f in fields(Worker)},
        dispatcher=dispatcher,
    )
    return worker
