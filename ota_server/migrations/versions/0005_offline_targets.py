"""Offline targets signing and recall floors: releases wait for their signature; recalls carry a minimum counter.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("published", sa.Boolean(), server_default=sa.true(), nullable=False))
    with op.batch_alter_table("recalls") as batch:
        batch.add_column(sa.Column("min_release_counter", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recalls") as batch:
        batch.drop_column("min_release_counter")
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("published")
