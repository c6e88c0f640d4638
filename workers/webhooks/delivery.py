"""One HTTP attempt: sign, POST, keep the status and the first 2 KiB of the answer.

aiohttp (not httpx: ADR 0011 has the measurements) with ``GuardedResolver``: every new
connection resolves the host once, checks every address and connects to a checked one;
IP literals are checked before the request. Redirects are never followed (a 3xx is a
failure), proxies from the environment are ignored, response bodies are not decompressed,
and the whole attempt — connect, send, first 2 KiB — has one deadline.
"""

from __future__ import annotations

import asyncio
import ssl
import time

import aiohttp

from workers.webhooks import signing
from workers.webhooks.domain import AttemptResult, Claimed, Clock
from workers.webhooks.service import MAX_RESPONSE_BODY
from workers.webhooks.ssrf import (
    GuardedResolver,
    Policy,
    RefusedDestination,
    check_literal,
    connect_url,
)


def make_session(
    policy: Policy, *, concurrency: int, verify: ssl.SSLContext | bool = True
) -> aiohttp.ClientSession:
    """The HTTP client of one worker process (create it inside the running event loop)."""
    connector = aiohttp.TCPConnector(
        limit=concurrency,
        limit_per_host=0,
        resolver=GuardedResolver(policy),
        use_dns_cache=False,  # every new connection resolves and checks again
        ssl=verify,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,  # no HTTP(S)_PROXY: a proxy would connect on our behalf, unchecked
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),  # one deadline per attempt, below
        skip_auto_headers=("Accept-Encoding",),
    )


class Deliverer:
    def __init__(
        self,
        policy: Policy,
        *,
        timeout_s: float,
        clock: Clock,
        concurrency: int,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.clock = clock
        self.concurrency = concurrency
        self.verify = verify
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = make_session(
                self.policy, concurrency=self.concurrency, verify=self.verify
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, message: Claimed) -> AttemptResult:
        now = self.clock()
        s = message.secrets
        keys = signing.signing_secrets(
            s.secret, s.previous_secret, s.previous_secret_expires_at, now
        )
        headers = signing.headers(keys, message.id, int(now.timestamp()), message.payload)
        started = time.perf_counter()
        status: int | None = None
        body: str | None = None
        retry_after: str | None = None
        error: str | None = None
        try:
            url = connect_url(message.url)  # without a trailing dot: what was checked
            check_literal(url.raw_host or "", self.policy)
            async with asyncio.timeout(self.timeout_s):
                async with self._client().post(
                    url, data=message.payload, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    retry_after = response.headers.get("retry-after")
                    body = await _prefix(response)
        except TimeoutError:
            if status is None:
                error = f"no answer within {self.timeout_s:g} s"
            else:  # the status counts; only the body (kept for display) was cut short
                error = f"HTTP {status}; the body did not arrive within {self.timeout_s:g} s"
        except RefusedDestination as e:
            error = f"refused destination: {e}"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return AttemptResult(
            attempted_at=now,
            latency_ms=round((time.perf_counter() - started) * 1000),
            status_code=status,
            body=body,
            error=error[:1000] if error else None,
            retry_after=retry_after,
        )


async def _prefix(response: aiohttp.ClientResponse) -> str:
    """The first 2 KiB of the body as sent (not decompressed), decoded leniently."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_RESPONSE_BODY:
        chunk = await response.content.read(MAX_RESPONSE_BODY - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks).decode("utf-8", "replace")
