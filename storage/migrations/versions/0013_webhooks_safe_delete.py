"""webhook endpoints deleted at any moment: no schema change

Decision (2026-12-03, issue 12 finding 2): the foreign keys stay as they are (messages and
attempts are deleted with their endpoint, ON DELETE CASCADE, so a deleted endpoint leaves
no data of the tenant behind). What broke was writing: the fan-out inserting messages for
an endpoint deleted since it read the endpoints, and the recorder inserting the attempt of
a message deleted while it was being delivered. Both violated the foreign key: the event
was dead-lettered (the endpoints still there never got it), and the batch of outcomes,
every tenant's, failed again every second, forever. No ON DELETE rule can make an insert of a
child of a missing parent succeed, and dropping the foreign key would leave orphans. So
the writers (storage/webhooks.py) write only rows whose endpoint / message still exists,
inside the same set-based statement, under a FOR KEY SHARE lock taken in key order: a
delete committed first removes the row from the join (the outcome is dropped), one that
comes later waits for the writer's commit and then cascades as usual.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
