"""The ingress FastAPI application (OpenAPI at ``/docs``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.envelope import new_id
from storage.commands import IdempotencyRepository
from workers.ingress import alerts as alert_routes
from workers.ingress import credit_notes as credit_note_routes
from workers.ingress import credits as credit_routes
from workers.ingress import discounts as discount_routes
from workers.ingress import documents as document_routes
from workers.ingress import entitlement_checks as check_routes
from workers.ingress import entitlements as entitlement_routes
from workers.ingress import fastpath, hosted, invoicing, pages, portal
from workers.ingress import one_off as one_off_routes
from workers.ingress import partners as partner_routes
from workers.ingress import payments as payment_routes
from workers.ingress import pos as pos_routes
from workers.ingress import receipts as receipt_routes
from workers.ingress import subscriptions as subscription_routes
from workers.ingress import tax_rates as tax_rate_routes
from workers.ingress import tax_report as tax_report_routes
from workers.ingress import webhooks as webhook_routes
from workers.ingress.deps import IngressState, KeyCache, correlation_id
from workers.ingress.door import Door
from workers.ingress.openapi import truthful_openapi
from workers.ingress.problems import HANDLERS
from workers.ingress.publisher import Publisher
from workers.ingress.routes import router
from workers.runtime.database import Database
from workers.runtime.jobs import JobLoop
from workers.runtime.ratelimit import TokenBuckets
from workers.settings import Settings

log = structlog.get_logger("billstream.ingress")


PURGE_EVERY_S = 3600


def idempotency_purge(st: IngressState) -> JobLoop:
    """The job that forgets Idempotency-Keys past their retention (hourly)."""
    retention = timedelta(hours=st.settings.idempotency_retention_hours)

    async def purge() -> bool:
        purged = await st.jobs.run(
            "ingress.idempotency_purge", lambda tx: tx.repo(IdempotencyRepository).purge(retention)
        )
        if purged:
            log.info("idempotency keys purged", rows=purged)
        return False

    return JobLoop("ingress.idempotency_purge", purge, PURGE_EVERY_S, st.jobs.stopping)


class RequestContext:
    """Binds the request id (``X-Request-Id``, or a new one) and the path to the logs and
    echoes the id on the response. Plain ASGI: no extra task or body stream per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        request_id = correlation_id(request) or new_id()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(requestid=request_id, path=request.url.path)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-Id"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(settings)
        publisher = Publisher(settings)
        app.state.ingress = st = IngressState(
            settings=settings,
            database=database,
            publisher=publisher,
            limiter=TokenBuckets(),
            keys=KeyCache(settings.api_key_cache_s),
        )
        purge = idempotency_purge(st)
        purging = asyncio.create_task(purge.run(), name=purge.name)
        log.info("ingress started", bootstrap=settings.kafka_bootstrap)
        try:
            yield
        finally:
            st.jobs.stopping.set()  # a purge retrying gives up; the loop ends
            purge.wake()
            try:
                await asyncio.wait_for(purging, settings.graceful_timeout_s)
            except TimeoutError:
                log.warning("the idempotency key purge did not finish; cancelled")
            await publisher.close()
            await database.close()
            log.info("ingress stopped")

    app = FastAPI(
        title="billstream ingress",
        version="0.1.0",
        description=(
            "Validates requests and publishes commands and usage events to Kafka. "
            "Every write answers 202; commands report their outcome at /v1/commands/{id}. "
            "Errors are RFC 9457 problem+json."
        ),
        lifespan=lifespan,
        exception_handlers=HANDLERS,  # type: ignore[arg-type]
    )
    routers = [
        router,
        invoicing.router,
        one_off_routes.router,
        subscription_routes.router,
        credit_routes.router,
        credit_note_routes.router,
        discount_routes.router,
        tax_rate_routes.router,
        payment_routes.router,
        webhook_routes.router,
        pos_routes.router,
        alert_routes.router,
        tax_report_routes.router,
        receipt_routes.router,
        check_routes.router,
        entitlement_routes.router,
        document_routes.router,
        partner_routes.router,
        pages.router,
        hosted.router,
        portal.router,
    ]
    # matched in this order, by FastAPI and by the door, route after route: the entitlement
    # checks first, the hottest reads (a gateway asks on its users' every request); no path
    # of theirs can be another router's
    matching = [
        check_routes.router,
        *(r for r in routers if r is not check_routes.router),
    ]
    for r in matching:
        app.include_router(r)
    # every API route, with its full path (FastAPI keeps included routers unflattened)
    api_routes = [route for r in routers for route in r.routes if isinstance(route, APIRoute)]

    # the last added runs first: the request id is bound before the door answers anything
    app.add_middleware(
        Door, routes=[route for r in matching for route in r.routes if isinstance(route, APIRoute)]
    )
    app.add_middleware(RequestContext)
    fastpath.install(app)  # outermost: the entitlement checks answered before the rest
    app.openapi = truthful_openapi(app, api_routes, settings.max_batch_events)  # type: ignore[method-assign]

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        st: IngressState = request.app.state.ingress
        checks: dict[str, str] = {}
        try:
            await st.database.ping()
            checks["database"] = "ok"
        except Exception as e:
            checks["database"] = f"unavailable: {type(e).__name__}"
        checks["broker"] = "ok" if await st.publisher.ready() else "unavailable"
        ok = all(v == "ok" for v in checks.values())
        body = {"status": "ok" if ok else "unavailable", **checks}
        if st.settings.ingress_instance:
            body["instance"] = st.settings.ingress_instance
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
