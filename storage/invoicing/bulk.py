"""One set-based statement for many rows: the invoicing repository's bulk INSERT and UPDATE
(``unnest`` of one array per column, so a chunk of 500 drafts is one round trip)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession


class EncodedList(list[Any]):
    """A JSONB array value that carries its JSON text, already encoded: ``bulk`` sends the
    text; everything else sees the list it is."""

    __slots__ = ("text",)

    def __init__(self, values: list[Any], text: str) -> None:
        super().__init__(values)
        self.text = text


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return value.text if type(value) is EncodedList else json.dumps(value)


def _sql_type(column: Any) -> str:
    dialect: Any = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(column.type.compile(dialect=dialect))


async def bulk(
    session: AsyncSession,
    table: Any,
    rows: Sequence[dict[str, Any]],
    *,
    suffix: str = "",
    update_by: tuple[str, ...] = (),
) -> list[Any]:
    """One set-based statement for many rows (all with the same keys): an INSERT, or with
    ``update_by`` an UPDATE matched on those columns, from ``unnest`` of one array per
    column. Returns the first column of what ``suffix`` (e.g. RETURNING) yields."""
    if not rows:
        return []
    names = list(rows[0])
    columns = [table.c[n] for n in names]
    params: dict[str, Any] = {}
    for i, c in enumerate(columns):
        values = [r[c.name] for r in rows]
        if isinstance(c.type, JSONB):
            values = [_json(v) for v in values]
        params[f"p{i}"] = values
    arrays = ", ".join(f"CAST(:p{i} AS {_sql_type(c)}[])" for i, c in enumerate(columns))
    source = f"unnest({arrays}) AS v({', '.join(names)})"
    if update_by:
        sets = ", ".join(f"{n} = v.{n}" for n in names if n not in update_by)
        match = " AND ".join(f"t.{n} = v.{n}" for n in update_by)
        sql = f"UPDATE {table.name} AS t SET {sets} FROM {source} WHERE {match} {suffix}"
    else:
        sql = f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM {source} {suffix}"
    result = await session.execute(text(sql), params)
    return list(result.scalars()) if suffix and "RETURNING" in suffix else []
