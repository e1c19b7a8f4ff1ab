"""The fleet, managed: a car's market and owner contact, and its decommissioning.

A decommissioned car (exported, scrapped, stolen, other) keeps its row and its history;
``decommissioned_at`` set takes it out of every open and future population.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 11:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # vehicles is referenced by other tables: only plain ALTER TABLE ... ADD COLUMN, never a rebuild.
    with op.batch_alter_table("vehicles", recreate="never") as batch:
        batch.add_column(sa.Column("market", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("owner_contact", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("decommissioned_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("decommission_reason", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("decommission_detail", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vehicles", recreate="never") as batch:
        batch.drop_column("decommission_detail")
        batch.drop_column("decommission_reason")
        batch.drop_column("decommissioned_at")
        batch.drop_column("owner_contact")
        batch.drop_column("market")
