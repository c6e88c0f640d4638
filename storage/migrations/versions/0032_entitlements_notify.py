"""entitlements: every change to a row a check reads is announced on the PostgreSQL channel
``billstream_entitlements``, so the ingress can keep checks' snapshots in memory and drop
one the moment a row it was read from changes (issue 18; storage/entitlements/cache.py)

One trigger function, ``billstream_entitlements_notify``, ``AFTER`` each row's change of the
tables the check's statement reads (storage/entitlements/snapshot.py ``SNAPSHOT``), with the
payload naming what to drop, as JSON:

- ``["<tenant_id>", "<customer>"]`` for a customer's rows: ``entitlement_subscriptions``,
  ``entitlement_overrides``, ``entitlement_grants``, ``entitlement_usage``,
  ``entitlement_unpaid`` (column ``customer``) and invoicing's ``customers`` (column
  ``external_id``; the check reads only whether the customer exists, so only an insert, a
  delete or a change of its tenant or external id is announced). An update naming another
  customer announces both;
- ``["<tenant_id>"]`` for a tenant's rows: ``entitlement_features``,
  ``entitlement_plan_grants``, ``entitlement_configs``;
- ``[]`` (everything) after a ``TRUNCATE`` of any of them.

An update that changes nothing (the row's text unchanged: a numeric's scale counts, as the
check's JSON shows it) announces nothing. PostgreSQL folds identical notifications of one
transaction and delivers them when it commits, so a batch of the worker's costs one per
customer. The channel and function names are repeated in storage/entitlements/snapshot.py
(``NOTIFY_CHANNEL``): a migration does not import the code it migrates for.

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0032"
down_revision: str | None = "0031"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHANNEL = "billstream_entitlements"
_FUNCTION = "billstream_entitlements_notify"

#: table -> the customer's column (None: the tenant's rows)
_TABLES: dict[str, str | None] = {
    "entitlement_subscriptions": "customer",
    "entitlement_overrides": "customer",
    "entitlement_grants": "customer",
    "entitlement_usage": "customer",
    "entitlement_unpaid": "customer",
    "customers": "external_id",
    "entitlement_features": None,
    "entitlement_plan_grants": None,
    "entitlement_configs": None,
}

_FUNCTION_SQL = f"""
CREATE FUNCTION {_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    col text := TG_ARGV[0];  -- the customer's column; none: a tenant's row
    old_row jsonb;
    new_row jsonb;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN  -- TRUNCATE: everything
        PERFORM pg_notify('{_CHANNEL}', '[]');
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD::text = NEW::text THEN
        RETURN NULL;  -- nothing a check reads changed
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := to_jsonb(OLD);
        PERFORM pg_notify('{_CHANNEL}', CASE WHEN col IS NULL
            THEN jsonb_build_array(old_row ->> 'tenant_id')
            ELSE jsonb_build_array(old_row ->> 'tenant_id', old_row ->> col) END::text);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW);
        PERFORM pg_notify('{_CHANNEL}', CASE WHEN col IS NULL
            THEN jsonb_build_array(new_row ->> 'tenant_id')
            ELSE jsonb_build_array(new_row ->> 'tenant_id', new_row ->> col) END::text);
    END IF;
    RETURN NULL;
END
$$
"""


def _triggers(table: str, column: str | None) -> list[str]:
    arg = f"'{column}'" if column else ""
    # customers: the check reads only (tenant_id, external_id), not the rest of the row
    update_when = (
        "WHEN ((OLD.tenant_id, OLD.external_id) IS DISTINCT FROM (NEW.tenant_id, NEW.external_id))"
        if table == "customers"
        else ""
    )
    name = f"{table}_entitlements_notify"
    run = f"EXECUTE FUNCTION {_FUNCTION}({arg})"
    return [
        f"CREATE TRIGGER {name} AFTER INSERT OR DELETE ON {table} FOR EACH ROW {run}",
        f"CREATE TRIGGER {name}_update AFTER UPDATE ON {table} FOR EACH ROW {update_when} {run}",
        f"CREATE TRIGGER {name}_truncate AFTER TRUNCATE ON {table} FOR EACH STATEMENT {run}",
    ]


def upgrade() -> None:
    op.execute(_FUNCTION_SQL)
    for table, column in _TABLES.items():
        for statement in _triggers(table, column):
            op.execute(statement)


def downgrade() -> None:
    for table in _TABLES:
        for suffix in ("", "_update", "_truncate"):
            op.execute(f"DROP TRIGGER {table}_entitlements_notify{suffix} ON {table}")
    op.execute(f"DROP FUNCTION {_FUNCTION}()")
