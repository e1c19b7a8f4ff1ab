"""Vehicle tags and saved groups.

``vehicle_tags``: an operator's labels on a car (one row per car and tag, lower case).
``vehicle_groups``: named filters over the fleet (model, years, VIN range, tags, installed
version, production dates) kept as JSON; names are unique case-insensitively (``name_key``).
Nothing existing changes: a recall that names a group keeps a copy of its filter in its own
``population`` JSON.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04 16:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "vehicle_tags",
        sa.Column("vehicle_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["vehicle_id"], ["vehicles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("vehicle_id", "tag"),
    )
    op.create_index("ix_vehicle_tags_tag", "vehicle_tags", ["tag", "vehicle_id"], unique=False)
    op.create_table(
        "vehicle_groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("name_key", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("filter", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name_key"),
    )


def downgrade() -> None:
    op.drop_table("vehicle_groups")
    op.drop_index("ix_vehicle_tags_tag", table_name="vehicle_tags")
    op.drop_table("vehicle_tags")
