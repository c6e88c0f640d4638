"""Engine, sessions and migrations."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import MetaData, text
from sqlalchemy.exc import SQLAlchemyError as DatabaseError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

__all__ = [
    "AsyncSession",  # re-exported: code outside storage/ types its sessions with it
    "Base",
    "DatabaseError",  # re-exported: what code outside storage/ catches when PostgreSQL fails
    "Sessions",
    "async_url",
    "create_engine",
    "migrate",
    "migrate_sync",
    "ping",
    "session_factory",
]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def async_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs too; billstream always talks asyncpg."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        hide_parameters=True,  # errors get logged: never with the values (secrets, PII)
    )


Sessions = async_sessionmaker[AsyncSession]
"""What code outside storage/ holds to open sessions (it never builds SQL itself)."""


def session_factory(engine: AsyncEngine, relay: str = "") -> async_sessionmaker[AsyncSession]:
    """Sessions of one process; ``relay`` names the worker whose outbox relay publishes
    the rows they write (``storage.outbox``)."""
    return async_sessionmaker(engine, expire_on_commit=False, info={"relay": relay})


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


MIGRATIONS = Path(__file__).parent / "migrations"


def _alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return cfg


def migrate_sync(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (idempotent)."""
    from alembic import command

    command.upgrade(_alembic_config(url), revision)


async def migrate(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(migrate_sync, url, revision)
