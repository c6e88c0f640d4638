"""The door: what every request goes through before any route sees it.

In this order, for every request that matches a route:

1. authentication, if the route needs a tenant: a request with no or a bad API key is
   answered 401 without reading its body;
2. path and query parameters: a control character (NUL included) is refused with 422
   naming the parameter (no id, key or filter can hold one);
3. the body, on routes that take one (others never read it): a declared
   ``Content-Length`` over ``BILLSTREAM_MAX_REQUEST_BYTES`` is refused with 413 before
   reading; otherwise the body is read up to that many bytes (413 past it) and replayed
   to the route;
4. JSON nesting deeper than ``BILLSTREAM_MAX_JSON_DEPTH`` is refused with 400 before
   anything parses it.

Around it all: an error that means a dependency (PostgreSQL, the broker) is unavailable
is answered 503 with ``Retry-After``, never 500.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

import structlog
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.ingress.deps import authenticate, tenant
from workers.ingress.problems import PROBLEM_JSON, Problem, dependency_down, unavailable

log = structlog.get_logger("billstream.ingress")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether ``body`` (JSON, or anything) nests arrays/objects deeper than ``limit``.

    Never parses, so it cannot recurse: escaped backslashes and quotes are dropped, then
    everything but brackets and quotes, then what lies between quotes (strings), all in C;
    only the brackets left are counted in Python. Malformed input is left for the parser."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    if b"\\" in body:  # escapes pair left to right: an escaped backslash first
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(body.translate(None, _NOT_STRUCTURE).split(b'"')[::2])
    depth = 0
    for b in brackets:
        if b == 0x5B or b == 0x7B:  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def needs_tenant(dependant: Dependant, tenant_call: Any) -> bool:
    """Whether ``tenant_call`` is among the (nested) dependencies of a route."""
    return any(
        d.call is tenant_call or needs_tenant(d, tenant_call) for d in dependant.dependencies
    )


def takes_body(route: APIRoute) -> bool:
    """Whether a route reads a request body: a body parameter, or one it reads itself
    (declared in its ``openapi_extra``)."""
    return route.body_field is not None or "requestBody" in (route.openapi_extra or {})


def control_characters(scope: Scope, path_params: dict[str, Any]) -> list[dict[str, str]]:
    """The path and query parameters holding a control character, named."""
    errors = [
        {"field": name, "reason": "must not contain control characters"}
        for name, value in path_params.items()
        if isinstance(value, str) and _CONTROL.search(value)
    ]
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            return [*errors, {"field": "query", "reason": "must be UTF-8, percent-encoded"}]
        bad = dict.fromkeys(n for n, v in pairs if _CONTROL.search(n) or _CONTROL.search(v))
        errors += [
            {"field": _CONTROL.sub("?", name), "reason": "must not contain control characters"}
            for name in bad
        ]
    return errors


async def send_problem(problem: Problem, scope: Scope, send: Send) -> None:
    from fastapi.responses import JSONResponse

    response = JSONResponse(
        problem.body(scope.get("path", "")),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_JSON,
    )
    await response(scope, _nothing, send)


async def _nothing() -> Message:  # pragma: no cover - a response never reads
    return {"type": "http.disconnect"}


class Door:
    """ASGI middleware: authentication → parameters → body size → JSON depth (module doc)."""

    def __init__(self, app: ASGIApp, routes: list[APIRoute]) -> None:
        self.app = app
        self.routes = routes
        self._auth: dict[int, bool] = {}

    def _route(self, scope: Scope) -> tuple[APIRoute | None, dict[str, Any]]:
        for route in self.routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                return route, child.get("path_params", {})
        return None, {}

    def _needs_auth(self, route: APIRoute) -> bool:
        key = id(route)
        if key not in self._auth:
            self._auth[key] = needs_tenant(route.dependant, tenant)
        return self._auth[key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            receive = await self._admit(scope, receive)
            await self.app(scope, receive, tracking_send)
        except Problem as problem:
            if started:
                raise
            await send_problem(problem, scope, send)
        except Exception as e:
            if started or not dependency_down(e):
                raise
            log.warning("dependency unavailable", error=repr(e))
            await send_problem(unavailable(e), scope, send)

    async def _admit(self, scope: Scope, receive: Receive) -> Receive:
        """Check the request in order; return the ``receive`` that replays its body."""
        route, path_params = self._route(scope)
        if route is None:
            return receive  # 404/405 (or a route outside the API): nothing reads the body
        headers = Headers(scope=scope)
        state = scope["app"].state.ingress
        if self._needs_auth(route):
            tenant_id = await authenticate(state, headers.get("authorization", ""))
            scope.setdefault("state", {})["tenant_id"] = tenant_id
        bad = control_characters(scope, path_params)
        if bad:
            detail = "; ".join(f"{e['field']}: {e['reason']}" for e in bad)
            raise Problem(422, "validation", "The request is not valid", detail, errors=bad)
        if not takes_body(route):
            return receive  # nothing reads it: it is never buffered
        limit: int = state.settings.max_request_bytes
        body = await read_limited(headers, receive, limit)
        if body and json_depth_exceeds(body, state.settings.max_json_depth):
            raise Problem(
                400,
                "json_too_deep",
                "JSON nested too deeply",
                f"at most {state.settings.max_json_depth} levels of arrays and objects",
            )
        return _replay(body, receive)


def too_large(limit: int) -> Problem:
    return Problem(413, "too_large", "Request body too large", f"at most {limit} bytes")


async def read_limited(headers: Headers, receive: Receive, limit: int) -> bytes:
    """The whole body, refused with 413 once it is known to exceed ``limit`` bytes."""
    declared = headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away; the route sees an empty body and fails cleanly
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, when the client goes

    return replay
