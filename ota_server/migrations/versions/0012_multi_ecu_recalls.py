"""Multi-ECU recalls: the releases a recall installs, at most one per hardware id; a campaign's ECUs.

Every existing recall gets its one release copied in (position 0), so the table lists
every recall's releases and the primary key refuses a second release of one hardware id.
``campaign_ecus`` freezes each car's affected ECUs and their releases at launch (campaigns
launched before have none: their progress shows no per-ECU counts).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 11:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "recall_releases",
        sa.Column("recall_id", sa.Integer(), nullable=False),
        sa.Column("hardware_id", sa.String(length=64), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["recall_id"], ["recalls.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"]),
        sa.PrimaryKeyConstraint("recall_id", "hardware_id"),
    )
    op.create_table(
        "campaign_ecus",
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("ecu_serial", sa.String(length=64), nullable=False),
        sa.Column("hardware_id", sa.String(length=64), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"]),
        sa.PrimaryKeyConstraint("campaign_id", "vin", "ecu_serial"),
    )
    op.execute(
        "INSERT INTO recall_releases (recall_id, hardware_id, release_id, position) "
        "SELECT recalls.id, releases.hardware_id, releases.id, 0 FROM recalls "
        "JOIN releases ON releases.id = recalls.release_id"
    )


def downgrade() -> None:
    op.drop_table("campaign_ecus")
    op.drop_table("recall_releases")
