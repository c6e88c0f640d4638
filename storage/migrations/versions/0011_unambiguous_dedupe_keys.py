"""unambiguous dedupe keys: inbox keys and webhook message ids

Until 0011 the inbox key was BLAKE2b(tenantid U+001F source U+001F id), and a webhook
message id BLAKE2b(endpoint U+001F source U+001F event id). A source or id may contain
U+001F, so (source "a\\x1fb", id "c") and (source "a", id "b\\x1fc") were one message: the
second was dropped as a duplicate, and never reached a webhook endpoint the first reached.

From 0011 (storage/inbox.py, workers/webhooks/service.py) parts that contain U+001F are
length-prefixed under their own BLAKE2b personalisation; parts without it keep the joined
form, which is unambiguous for them. So no stored key changes and no row is rewritten:

- every inbox row written before the upgrade is still the key of its message, for as long
  as the row is kept (``inbox_retention_days``, at least 32 days): no redelivery is applied
  twice across the upgrade, and the claim costs what it cost;
- the only keys that changed are those of messages with U+001F in a part; for them (and
  only them) the claim also looks the old joined key up, so one applied before the upgrade
  is still a duplicate. Rows written after the upgrade never hold an old-form key of such a
  message, so that lookup finds nothing once the old rows are purged;
- webhook messages keep their ids (``webhook-id``); retries read the stored id.

This migration changes no data; it documents the key format on the column.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_COMMENT = (
    "BLAKE2b-128 of tenantid, source, id: joined by U+001F when no part contains it, "
    "else length-prefixed parts (person billstream-inbox)"
)


def upgrade() -> None:
    op.execute(f"COMMENT ON COLUMN inbox.message_key IS '{KEY_COMMENT}'")


def downgrade() -> None:
    op.execute("COMMENT ON COLUMN inbox.message_key IS NULL")
