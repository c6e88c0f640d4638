"""Which failures are transient (retry with backoff) and which are permanent."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from sqlalchemy import exc as sa_exc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from workers.runtime.errors import RetryableError, ShuttingDown

R = TypeVar("R")

# SQLSTATE classes: 08 connection, 40 rollback (serialization, deadlock),
# 53 insufficient resources, 57 operator intervention (shutdown), 58 system error
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
# asyncpg refuses a statement of more than 32,767 bind parameters before sending it, with
# an InterfaceError of no SQLSTATE (like a dropped connection's): not transient
_REFUSED_BY_DRIVER = "query arguments cannot exceed"


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, RetryableError | ConnectionError | TimeoutError | asyncio.TimeoutError):
        return True
    if isinstance(exc, KafkaConnectionError | KafkaTimeoutError):
        return True
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False))
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        cause = exc.orig.__cause__ if exc.orig is not None else None
        # asyncpg's own error (the cause of SQLAlchemy's adapted one) carries the SQLSTATE
        # when the adapted one does not: 08003 for a connection that no longer exists
        sqlstate = (
            getattr(exc.orig, "sqlstate", None)
            or getattr(exc.orig, "pgcode", None)
            or getattr(cause, "sqlstate", None)
        )
        if isinstance(sqlstate, str):
            return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
        if _REFUSED_BY_DRIVER in str(cause or exc.orig):
            return False  # refused before it was sent: the same batch would be, forever
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or isinstance(
            cause, OSError | ConnectionError
        )
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)  # the driver's own error, unwrapped
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return isinstance(exc, OSError)


async def retrying(
    attempt: Callable[[], Awaitable[R]],
    *,
    initial_s: float,
    max_s: float,
    stopping: asyncio.Event | None = None,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> R:
    """Run ``attempt``; retry transient failures with exponential backoff and jitter until it
    succeeds (never giving up) or ``stopping`` is set (``ShuttingDown``). Permanent failures
    propagate at once."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            error = state.outcome.exception()
            if error is not None:
                on_retry(state.attempt_number, error)

    async for state in AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(multiplier=initial_s, jitter=initial_s, max=max_s),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with state:
            if stopping is not None and stopping.is_set():
                raise ShuttingDown()
            return await attempt()
    raise AssertionError("unreachable")  # AsyncRetrying either returns or raises
