"""A campaign car's ``released_at`` is renamed ``notified_at``: when its notice was sent.

The old name read as if it were about a ``Release``; the column always held the time the
scheduler notified the car. A rename in place (no copy): SQLite's and PostgreSQL's
``ALTER TABLE ... RENAME ... TO ...``; every row and index stays as it is.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 13:15:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaign_vehicles", recreate="never") as batch:
        batch.alter_column("released_at", new_column_name="notified_at")


def downgrade() -> None:
    with op.batch_alter_table("campaign_vehicles", recreate="never") as batch:
        batch.alter_column("notified_at", new_column_name="released_at")
