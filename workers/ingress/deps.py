"""Request-scoped dependencies: the request's unit of work, the caller's tenant,
idempotency."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from schemas.bounds import text_problem
from storage.commands import IdempotencyRepository
from storage.tenants import TenantRepository
from workers.ingress.problems import Problem
from workers.ingress.publisher import Publisher
from workers.runtime.database import Database
from workers.runtime.jobs import Jobs
from workers.runtime.ratelimit import TokenBuckets
from workers.runtime.tx import Tx
from workers.settings import Settings

log = structlog.get_logger("billstream.ingress")


class KeyCache:
    """The tenants of API keys this process verified in the last ``ttl_s`` seconds.

    Only successes are kept (a new key works at once; a wrong one is checked every time),
    under the key's SHA-256 digest, never the key; at most ``max_size`` entries.
    """

    def __init__(self, ttl_s: float, max_size: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_size = max_size
        self._entries: dict[bytes, tuple[str, float]] = {}

    def get(self, secret: str) -> str | None:
        if self.ttl_s <= 0:
            return None
        hit = self._entries.get(hashlib.sha256(secret.encode()).digest())
        if hit is None or hit[1] <= time.monotonic():
            return None
        return hit[0]

    def put(self, secret: str, tenant_id: str) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._entries) >= self.max_size:
            now = time.monotonic()
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            if len(self._entries) >= self.max_size:
                self._entries.clear()
        digest = hashlib.sha256(secret.encode()).digest()
        self._entries[digest] = (tenant_id, time.monotonic() + self.ttl_s)


@dataclass
class IngressState:
    settings: Settings
    database: Database
    publisher: Publisher
    limiter: TokenBuckets[str]  # per tenant: settings.rate_limit_events_per_s
    keys: KeyCache = field(default_factory=lambda: KeyCache(0))

    @property
    def jobs(self) -> Jobs:
        """Transactions: ``jobs.transaction(name)`` is one attempt, a failure answered 503."""
        return self.database.jobs


async def state(request: Request) -> IngressState:  # async: no thread-pool hop per request
    s: IngressState = request.app.state.ingress
    return s


State = Annotated[IngressState, Depends(state)]


async def unit(st: State) -> AsyncIterator[Tx]:
    """The request's unit of work: read models through ``tx.repo(Repository)``. One
    transaction, one attempt: it commits before the response is sent (the dependency's
    scope is the route function), and a dead PostgreSQL is answered 503 by the door."""
    async with st.jobs.transaction("ingress") as tx:
        yield tx


Unit = Annotated[Tx, Depends(unit, scope="function")]


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        "unauthorized",
        "Authentication required",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="billstream"'},
    )


async def authenticate(st: IngressState, authorization: str) -> str:
    """The tenant of the ``Authorization: Bearer <api key>`` header, or 401."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send 'Authorization: Bearer <api key>'")
    secret = token.strip()
    tenant_id = st.keys.get(secret)
    if tenant_id is None:
        async with st.jobs.transaction("ingress") as tx:
            tenant_id = await tx.repo(TenantRepository).authenticate(secret)
        if tenant_id is None:
            raise _unauthorized("the API key is not valid")
        st.keys.put(secret, tenant_id)
    structlog.contextvars.bind_contextvars(tenantid=tenant_id)
    return tenant_id


async def tenant(request: Request, st: State) -> str:
    """The caller's tenant. The door (workers/ingress/door.py) authenticates every route
    that depends on this before its body is read, and leaves the tenant in the scope."""
    found = request.scope.get("state", {}).get("tenant_id")
    if isinstance(found, str):
        return found
    return await authenticate(st, request.headers.get("authorization", ""))


Tenant = Annotated[str, Depends(tenant)]

Produce = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]


async def idempotent(
    request: Request, st: IngressState, tenant_id: str, body: bytes, produce: Produce
) -> JSONResponse:
    """Honour ``Idempotency-Key``: a repeat of a finished request gets the same response,
    a concurrent repeat 409, the same key with another body 422."""
    key = request.headers.get("idempotency-key")
    if key is None:
        status, payload = await produce()
        return JSONResponse(payload, status_code=status)
    if not 1 <= len(key) <= 255:
        raise Problem(400, "idempotency_key", "Invalid Idempotency-Key", "1 to 255 characters")
    digest = hashlib.sha256(request.method.encode() + request.url.path.encode() + body).digest()
    async with st.jobs.transaction("ingress") as tx:
        state_, row = await tx.repo(IdempotencyRepository).begin(tenant_id, key, digest)
    if state_ == "mismatch":
        raise Problem(
            422,
            "idempotency_key_reused",
            "Idempotency-Key reused",
            "this key was used for a different request; use a new key",
        )
    if state_ == "in_progress":
        raise Problem(
            409,
            "idempotency_in_progress",
            "Request in progress",
            "a request with this Idempotency-Key is still being processed; retry shortly",
            headers={"Retry-After": "1"},
        )
    if state_ == "done":
        assert row is not None and row.status_code is not None
        return JSONResponse(
            row.response, status_code=row.status_code, headers={"Idempotent-Replayed": "true"}
        )
    try:
        status, payload = await produce()
    except BaseException:
        async with st.jobs.transaction("ingress") as tx:
            await tx.repo(IdempotencyRepository).abandon(tenant_id, key)
        raise
    async with st.jobs.transaction("ingress") as tx:
        await tx.repo(IdempotencyRepository).finish(tenant_id, key, status, payload)
    return JSONResponse(payload, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (checked while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> Problem:
    return Problem(413, "too_large", "Request body too large", f"at most {limit} bytes")


def parse_json(body: bytes) -> Any:
    from schemas import jsonexact

    try:
        return jsonexact.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise Problem(400, "malformed_json", "Malformed JSON", str(e)) from None


def correlation_id(request: Request) -> str | None:
    """The client's ``X-Request-Id``, the correlation id of what the request publishes, when
    it can be one (1 to 256 characters, one line); else None, and the request is known by an
    id of its own (an invalid header is never a reason to refuse a request)."""
    value = request.headers.get("x-request-id")
    if not value or len(value) > 256 or text_problem(value, line=True) is not None:
        return None
    return value
