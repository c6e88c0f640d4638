"""entitlements: features, plan grants, overrides, one-off grants, the read model a check
is answered from (subscriptions, unpaid invoices, standing, usage per period, limit hits)
and the deployment's token signing keys (storage/entitlements.py)

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TZ = sa.DateTime(timezone=True)


def _tenant() -> sa.Column[str]:
    return sa.Column(
        "tenant_id",
        sa.String(63),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    )


def _customer(primary_key: bool = True) -> sa.Column[str]:
    return sa.Column("customer", sa.String(256), primary_key=primary_key, nullable=False)


def _limits() -> list[sa.Column[object]]:
    return [
        sa.Column("config", JSONB(), nullable=True),
        sa.Column("limit", sa.Numeric(), nullable=True, comment="none: unlimited"),
        sa.Column("limit_mode", sa.String(8), nullable=False, comment="soft | hard"),
    ]


def upgrade() -> None:
    op.create_table(
        "entitlement_features",
        _tenant(),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, comment="boolean | config | metered"),
        sa.Column("meter", sa.String(64), nullable=True, comment="metered: the meter's key"),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", _TZ, server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "entitlement_plan_grants",
        _tenant(),
        sa.Column("plan", sa.String(64), primary_key=True, comment="the plan's key"),
        sa.Column("feature", sa.String(64), primary_key=True),
        *_limits(),
    )
    op.create_table(
        "entitlement_overrides",
        _tenant(),
        _customer(),
        sa.Column("feature", sa.String(64), primary_key=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        *_limits(),
    )
    op.create_table(
        "entitlement_grants",
        _tenant(),
        sa.Column("id", sa.String(64), primary_key=True),
        _customer(False),
        sa.Column("feature", sa.String(64), nullable=False),
        sa.Column("units", sa.Numeric(), nullable=True),
        sa.Column("starts_at", _TZ, nullable=False),
        sa.Column("expires_at", _TZ, nullable=True),
        sa.Column(
            "due_at",
            _TZ,
            nullable=True,
            comment="its next start or expiry not announced yet (the worker's tick announces it)",
        ),
    )
    op.create_index(
        "ix_entitlement_grants_customer", "entitlement_grants", ["tenant_id", "customer"]
    )
    op.create_index(
        "ix_entitlement_grants_due",
        "entitlement_grants",
        ["due_at"],
        postgresql_where=sa.text("due_at IS NOT NULL"),
    )
    op.create_table(
        "entitlement_subscriptions",
        _tenant(),
        sa.Column("subscription_id", sa.String(64), primary_key=True),
        _customer(False),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("interval", sa.String(8), nullable=False, comment="the plan's: month | year"),
        sa.Column("status", sa.String(16), nullable=False, comment="active | ended"),
        sa.Column("current_period_start", _TZ, nullable=False),
        sa.Column("current_period_end", _TZ, nullable=False),
    )
    op.create_index(
        "ix_entitlement_subscriptions_customer",
        "entitlement_subscriptions",
        ["tenant_id", "customer"],
    )
    op.create_index(
        "ix_entitlement_subscriptions_plan",
        "entitlement_subscriptions",
        ["tenant_id", "plan"],
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_table(
        "entitlement_configs",
        _tenant(),
        sa.Column("payment_grace_hours", sa.Integer(), nullable=False),
        sa.Column("token_ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("rate_limit_feature", sa.String(64), nullable=True),
    )
    op.create_table(
        "entitlement_unpaid",
        _tenant(),
        sa.Column("invoice_id", sa.String(64), primary_key=True),
        _customer(False),
        sa.Column(
            "failed_at",
            _TZ,
            nullable=False,
            comment="the first failure: the grace counts from here",
        ),
        sa.Column("exhausted", sa.Boolean(), nullable=False, comment="dunning gave up on it"),
    )
    op.create_index(
        "ix_entitlement_unpaid_customer", "entitlement_unpaid", ["tenant_id", "customer"]
    )
    op.create_table(
        "entitlement_standing",
        _tenant(),
        _customer(),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("features", JSONB(), nullable=False, comment="keys with access, sorted"),
        sa.Column("changed_at", _TZ, nullable=False),
    )
    op.create_table(
        "entitlement_stale",
        _tenant(),
        _customer(),
        sa.Column(
            "reason", sa.String(32), nullable=False, comment="granted/revoked reason to announce"
        ),
        sa.Column("marked_at", _TZ, nullable=False),
    )
    op.create_table(
        "entitlement_usage",
        _tenant(),
        _customer(),
        sa.Column("meter", sa.String(64), primary_key=True),
        sa.Column("period_start", _TZ, primary_key=True),
        sa.Column("period_end", _TZ, nullable=False),
        sa.Column("usage", sa.Numeric(), nullable=False),
        sa.Column("updated_at", _TZ, nullable=False),
    )
    op.create_table(
        "entitlement_limit_hits",
        _tenant(),
        _customer(),
        sa.Column("feature", sa.String(64), primary_key=True),
        sa.Column("period_start", _TZ, primary_key=True),
        sa.Column("period_end", _TZ, nullable=False),
        sa.Column("usage", sa.Numeric(), nullable=False),
        sa.Column("limit", sa.Numeric(), nullable=False),
        sa.Column("limit_mode", sa.String(8), nullable=False),
        sa.Column("reached_at", _TZ, nullable=False),
        sa.Column("restored_at", _TZ, nullable=True),
    )
    op.create_index(
        "ix_entitlement_limit_hits_open",
        "entitlement_limit_hits",
        ["period_end"],
        postgresql_where=sa.text("restored_at IS NULL AND limit_mode = 'hard'"),
    )
    op.create_table(
        "entitlement_keys",
        sa.Column("kid", sa.String(64), primary_key=True, comment="RFC 7638 thumbprint"),
        sa.Column(
            "current",
            sa.Boolean(),
            server_default=sa.text("true"),
            nullable=True,
            comment="true while current, then null",
        ),
        sa.Column("public_key", sa.String(64), nullable=False, comment="Ed25519, raw, base64url"),
        sa.Column("private_key", sa.Text(), nullable=False, comment="Fernet ciphertext (enc:…)"),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("retired_at", _TZ, nullable=True),
    )
    op.create_index(
        "ux_entitlement_keys_current",
        "entitlement_keys",
        ["current"],
        unique=True,
        postgresql_where=sa.text("retired_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ux_entitlement_keys_current", table_name="entitlement_keys")
    op.drop_table("entitlement_keys")
    op.drop_index("ix_entitlement_limit_hits_open", table_name="entitlement_limit_hits")
    for table in (
        "entitlement_limit_hits",
        "entitlement_usage",
        "entitlement_stale",
        "entitlement_standing",
        "entitlement_unpaid",
        "entitlement_configs",
        "entitlement_subscriptions",
        "entitlement_grants",
        "entitlement_overrides",
        "entitlement_plan_grants",
        "entitlement_features",
    ):
        op.drop_table(table)
