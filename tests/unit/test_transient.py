"""Which failures the runtime retries with backoff (transient) and which it dead-letters."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka import errors as kafka_errors
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

from workers.metering.errors import MeterConflict, MeteringRetryableError, UnusableEvent
from workers.runtime.errors import PermanentError, RetryableError
from workers.runtime.transient import is_transient

_dbapi = AsyncAdapt_asyncpg_dbapi(asyncpg)  # type: ignore[no-untyped-call]


def db_error(pg_error: Exception, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    """``pg_error`` as SQLAlchemy raises it from an asyncpg session (two layers of wrapping)."""
    translate = _dbapi._asyncpg_error_translate
    adapted_class = next(translate[c] for c in type(pg_error).__mro__ if c in translate)
    adapted = adapted_class(f"{type(pg_error)}: {pg_error}", pg_error)
    adapted.__cause__ = pg_error
    wrapped = sa_exc.DBAPIError.instance(
        "UPDATE usage_hourly SET count = count + 1",
        {},
        adapted,
        _dbapi.Error,
        connection_invalidated=invalidated,
    )
    assert isinstance(wrapped, sa_exc.DBAPIError)
    return wrapped


class FakeOrig(Exception):
    def __init__(self, sqlstate: str | None = None, pgcode: str | None = None) -> None:
        super().__init__("driver error")
        self.sqlstate = sqlstate
        self.pgcode = pgcode


def wrap(orig: Exception) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    "exc",
    [
        RetryableError("broker busy"),
        MeteringRetryableError("try later"),
        ConnectionError("reset"),
        ConnectionResetError(104, "Connection reset by peer"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
        kafka_errors.KafkaConnectionError("no broker"),
        kafka_errors.KafkaTimeoutError(),
        kafka_errors.RequestTimedOutError(),
        kafka_errors.NotLeaderForPartitionError(),  # retriable: leadership moves
    ],
    ids=type,
)
def test_transient(exc: BaseException) -> None:
    assert is_transient(exc) is True


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad input"),
        KeyError("x"),
        PermanentError("never"),
        MeterConflict("exists", field="key"),
        UnusableEvent("no meter"),
        kafka_errors.UnsupportedVersionError(),
        kafka_errors.TopicAuthorizationFailedError(),
    ],
    ids=type,
)
def test_permanent(exc: BaseException) -> None:
    assert is_transient(exc) is False


@pytest.mark.parametrize(
    ("pg_error", "transient"),
    [
        (asyncpg.exceptions.SerializationError("could not serialize access"), True),  # 40001
        (asyncpg.exceptions.DeadlockDetectedError("deadlock detected"), True),  # 40P01
        (asyncpg.exceptions.ConnectionFailureError("connection failure"), True),  # 08006
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), True),  # 57P01
        (asyncpg.exceptions.TooManyConnectionsError("too many clients"), True),  # 53300
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), False),  # 23505
        (asyncpg.exceptions.ForeignKeyViolationError("no such tenant"), False),  # 23503
        (asyncpg.exceptions.NumericValueOutOfRangeError("numeric overflow"), False),  # 22003
        (asyncpg.exceptions.UndefinedTableError("no table"), False),  # 42P01
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_database_errors_by_sqlstate(pg_error: Exception, transient: bool) -> None:
    error = db_error(pg_error)
    assert error.orig.sqlstate == pg_error.sqlstate  # type: ignore[union-attr,attr-defined]
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    ("sqlstate", "transient"),
    [("40001", True), ("08006", True), ("08003", True), ("23505", False), ("22P02", False)],
)
def test_sqlstate_on_the_driver_error(sqlstate: str, transient: bool) -> None:
    assert is_transient(wrap(FakeOrig(sqlstate=sqlstate))) is transient
    # psycopg-style drivers call it pgcode
    assert is_transient(wrap(FakeOrig(pgcode=sqlstate))) is transient


def test_sqlstate_decides_even_for_an_operational_error() -> None:
    constraint = sa_exc.OperationalError("INSERT", {}, FakeOrig(sqlstate="23505"))
    assert is_transient(constraint) is False


def test_an_invalidated_connection_is_transient_whatever_the_error() -> None:
    unique = asyncpg.exceptions.UniqueViolationError("duplicate key")
    assert is_transient(db_error(unique, invalidated=True)) is True


def test_without_sqlstate_a_dropped_connection_is_transient() -> None:
    orig = FakeOrig()
    orig.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    assert is_transient(wrap(orig)) is True
    assert is_transient(wrap(FakeOrig())) is False
    assert is_transient(sa_exc.OperationalError("SELECT 1", {}, FakeOrig())) is True
    assert is_transient(sa_exc.InterfaceError("SELECT 1", {}, FakeOrig())) is True


def test_a_statement_the_driver_refuses_before_sending_it_is_permanent() -> None:
    """Too many bind parameters: asyncpg's InterfaceError carries no SQLSTATE, like a
    dropped connection's, but the same batch would be refused on every retry."""
    refused = asyncpg.exceptions.InterfaceError("the number of query arguments cannot exceed 32767")
    assert is_transient(db_error(refused)) is False
    closed = asyncpg.exceptions.InterfaceError("connection is closed")
    assert is_transient(db_error(closed)) is True


def test_pool_timeouts_and_disconnects_are_transient() -> None:
    assert is_transient(sa_exc.TimeoutError("QueuePool limit reached")) is True
    assert is_transient(sa_exc.DisconnectionError("gone")) is True


def test_a_connection_that_no_longer_exists_is_transient_wrapped_or_not() -> None:
    """asyncpg raises it when PostgreSQL went away mid-session (e.g. a failed rollback
    after a restart); SQLAlchemy's adapted error carries no SQLSTATE of its own."""
    gone = asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
    assert is_transient(gone)
    assert is_transient(db_error(gone))
