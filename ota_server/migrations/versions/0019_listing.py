"""Lists that scale: retired releases.

``releases`` gains ``retired_at``, ``retired_by`` and ``retire_reason`` (all null: not retired).
The list sorts are served by existing keys (primary keys, ``campaign_vehicles``' (campaign, VIN)
primary key and (campaign, state) index), so no index is added.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04 16:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("retired_by", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("retire_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("retire_reason")
        batch.drop_column("retired_by")
        batch.drop_column("retired_at")
