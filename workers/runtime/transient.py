"""Which failures are transient (retry with backoff) and which are permanent."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from sqlalchemy import exc as sa_exc

from workers.runtime.errors import RetryableError

# SQLSTATE classes: 08 connection, 40 rollback (serialization, deadlock),
# 53 insufficient resources, 57 operator intervention (shutdown), 58 system error
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")


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
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(sqlstate, str):
            return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
        cause = exc.orig.__cause__ if exc.orig is not None else None
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or isinstance(
            cause, OSError | ConnectionError
        )
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    return isinstance(exc, OSError)
