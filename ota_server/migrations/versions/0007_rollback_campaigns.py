"""Rollback campaigns: campaigns.kind and campaigns.parent_campaign_id.

A recall keeps one remedy campaign (a partial unique index replaces the unique recall_id)
and may gain one rollback campaign per tripped remedy campaign.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REMEDY_ONLY = sa.text("kind = 'remedy'")
# 0001 left the UNIQUE(recall_id) unnamed; this names it on reflection so it can be dropped.
_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("kind", sa.String(length=16), server_default="remedy", nullable=False))
    if op.get_bind().dialect.name == "sqlite":
        # SQLite can neither add a foreign key nor drop a table constraint in place: one rebuild
        # (ota_server.db.migrate turns foreign key enforcement off meanwhile).
        op.add_column("campaigns", sa.Column("parent_campaign_id", sa.Integer(), nullable=True))
        with op.batch_alter_table("campaigns", recreate="always", naming_convention=_NAMES) as batch:
            batch.drop_constraint("uq_campaigns_recall_id", type_="unique")
            batch.create_foreign_key("fk_campaigns_parent_campaign_id", "campaigns", ["parent_campaign_id"], ["id"])
            batch.create_unique_constraint("uq_campaigns_parent", ["parent_campaign_id"])
    else:
        op.add_column(
            "campaigns",
            sa.Column(
                "parent_campaign_id",
                sa.Integer(),
                sa.ForeignKey("campaigns.id", name="fk_campaigns_parent_campaign_id"),
                nullable=True,
            ),
        )
        op.create_unique_constraint("uq_campaigns_parent", "campaigns", ["parent_campaign_id"])
        op.drop_constraint("campaigns_recall_id_key", "campaigns", type_="unique")
    op.create_index(
        "uq_campaigns_recall_remedy",
        "campaigns",
        ["recall_id"],
        unique=True,
        sqlite_where=_REMEDY_ONLY,
        postgresql_where=_REMEDY_ONLY,
    )


def downgrade() -> None:
    op.drop_index("uq_campaigns_recall_remedy", table_name="campaigns")
    # The rollback campaigns (and their cars) cannot live in the old schema.
    for child in ("campaign_vehicles", "campaign_events", "notice_log"):
        op.execute(f"DELETE FROM {child} WHERE campaign_id IN (SELECT id FROM campaigns WHERE kind <> 'remedy')")
    op.execute("DELETE FROM campaigns WHERE kind <> 'remedy'")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_constraint("uq_campaigns_parent", type_="unique")
        batch.drop_constraint("fk_campaigns_parent_campaign_id", type_="foreignkey")
        batch.drop_column("parent_campaign_id")
        batch.drop_column("kind")
        batch.create_unique_constraint("campaigns_recall_id_key", ["recall_id"])
