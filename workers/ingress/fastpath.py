"""The entitlement checks without the framework: the hottest requests of the API (a gateway
asks on its users' every request) answered in plain ASGI, before FastAPI sees them.

``GET /v1/customers/{customer}/entitlements`` and ``…/entitlements/{feature}`` — no query
string, parameters that fit their patterns — are answered here as the door and the routes
in ``entitlement_checks.py`` would answer them, byte for byte: the same authentication (the
process's ``KeyCache``; 401 problem), the same body (``entitlements.check_body``) and
headers, the same 404 problems for an unknown customer or feature, the same 503 with
``Retry-After`` when PostgreSQL does not answer, the same ``X-Request-Id`` echo and log
context as ``RequestContext``. Without a Starlette ``Request``, route matching over every
route (twice: the door's and the router's), dependency injection, validation of the
response or the middleware chain, a check costs a fraction of the CPU.

Everything else — other methods, other paths, a query string, a parameter that does not
fit its pattern or holds a control character (the door's 422, then FastAPI's), a
``root_path`` — goes on to FastAPI unchanged. The routes stay declared there, so the
OpenAPI document does not change (tests/integration/test_entitlements_api.py compares
both paths' answers).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.bounds import EXTERNAL_ID_PATTERN, text_problem
from schemas.entitlements import FEATURE_KEY_PATTERN
from schemas.envelope import new_id
from workers.ingress.deps import authenticate
from workers.ingress.door import send_problem
from workers.ingress.entitlement_checks import check_body, snapshots
from workers.ingress.problems import Problem, dependency_down, unavailable

log = structlog.get_logger("billstream.ingress")

_CHECK = re.compile(r"/v1/customers/([^/]+)/entitlements(?:/([^/]+))?")


def _whole(pattern: str) -> re.Pattern[str]:
    """``pattern`` (anchored ``^…$``) for ``fullmatch``: ``$`` would let a final newline in."""
    return re.compile(pattern.removeprefix("^").removesuffix("$"))


_CUSTOMER = _whole(EXTERNAL_ID_PATTERN)
_FEATURE = _whole(FEATURE_KEY_PATTERN)
_JSON = (b"content-type", b"application/json")


def check_params(scope: Scope) -> tuple[str, str | None] | None:
    """The customer and feature (None: every feature) of a check the fast path answers, or
    None for any request it leaves to FastAPI."""
    if scope["type"] != "http" or scope["method"] != "GET" or scope.get("query_string"):
        return None
    if scope.get("root_path"):
        return None
    m = _CHECK.fullmatch(scope["path"])
    if m is None:
        return None
    customer, feature = m.group(1), m.group(2)
    if _CUSTOMER.fullmatch(customer) is None:
        return None
    if feature is not None and _FEATURE.fullmatch(feature) is None:
        return None
    return customer, feature


def _request_id(value: str | None) -> str:
    """``correlation_id``'s rule (deps.py) on the raw header: the client's id if it can be
    one, else a new id."""
    if not value or len(value) > 256 or text_problem(value, line=True) is not None:
        return new_id()
    return value


class CheckFastPath:
    """ASGI middleware, outermost of the app's own: answers the two checks (module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = check_params(scope)
        if params is None:
            await self.app(scope, receive, send)
            return
        customer, feature = params
        authorization: str | None = None
        given_id: str | None = None
        for name, value in scope["headers"]:  # the first of each, as Headers.get reads
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"x-request-id" and given_id is None:
                given_id = value.decode("latin-1")
        request_id = _request_id(given_id)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(requestid=request_id, path=scope["path"])
        rid = request_id.encode("latin-1")
        app_state = scope["app"].state
        try:
            tenant_id = await authenticate(app_state.ingress, authorization or "")
            body = await check_body(snapshots(app_state), tenant_id, customer, feature)
        except Problem as problem:  # the door's 401, the route's 404
            await send_problem(problem, scope, _with_id(send, rid))
            return
        except Exception as e:
            if not dependency_down(e):
                raise
            log.warning("dependency unavailable", error=repr(e))
            await send_problem(unavailable(e), scope, _with_id(send, rid))
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body)), _JSON, (b"x-request-id", rid)],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _with_id(send: Send, rid: bytes) -> Send:
    """``send``, adding ``X-Request-Id`` to the response's headers (as RequestContext)."""

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
        await send(message)

    return send_with_id


def install(app: FastAPI) -> None:
    """Put the fast path in front of every other middleware of ``app`` (call it after the
    last ``add_middleware``), and, when the app stops, before its own lifespan disposes of
    the engine, stop the checks' cache listening and give back the connections it keeps."""
    app.add_middleware(CheckFastPath)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            try:
                yield state
            finally:
                cache = getattr(a.state, "entitlement_snapshots", None)
                if cache is not None:
                    await cache.close()

    app.router.lifespan_context = lifespan
