"""Campaign engine: rollout plans, campaign status, per-VIN progress keys, deferral events, notice log.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Report states in rank order (firmware_bundles.messages.ReportState); terminal ones share the top rank.
_RANKS = {
    "pending": -1,
    "notified": 0,
    "deferred": 1,
    "consented": 2,
    "downloading": 3,
    "verifying": 4,
    "installing": 5,
    "rebooting": 6,
}
_TERMINAL_RANK = 7


def upgrade() -> None:
    # Tables other tables point at only gain columns (a plain ALTER TABLE): recreating them
    # on SQLite would drop a referenced table, which its foreign keys refuse once rows exist.
    with op.batch_alter_table("vehicles", recreate="never") as batch:  # other tables point at it
        batch.add_column(sa.Column("time_zone", sa.String(length=64), nullable=True))
    with op.batch_alter_table("recalls", recreate="never") as batch:  # other tables point at it
        batch.add_column(sa.Column("remedy_type", sa.String(length=8), server_default="ota", nullable=False))
        batch.add_column(sa.Column("owner_notice", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("preconditions", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("rollout", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("dynamic", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("requires_consent", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("campaigns", recreate="never") as batch:  # other tables point at it
        batch.add_column(sa.Column("launch_population", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("status", sa.String(length=16), server_default="active", nullable=False))
        batch.add_column(sa.Column("status_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("current_wave", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("error_baseline", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE campaigns SET launch_population = population")
    with op.batch_alter_table("campaign_vehicles") as batch:
        batch.alter_column("state", type_=sa.String(length=32), existing_type=sa.String(length=16))
        batch.add_column(sa.Column("wave", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("deferrals", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("progress_rank", sa.Integer(), server_default="-1", nullable=False))
        batch.add_column(sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("retries", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("next_retry_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("recorded_by", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("evidence_ref", sa.String(length=200), nullable=True))
        batch.create_index("ix_campaign_vehicles_campaign_state", ["campaign_id", "state"], unique=False)
    # Campaigns launched before waves existed notified every car at launch.
    op.execute("UPDATE campaign_vehicles SET released_at = updated_at")
    op.execute(f"UPDATE campaign_vehicles SET progress_rank = {_TERMINAL_RANK} WHERE state <> 'pending'")
    for state, rank in _RANKS.items():
        op.execute(f"UPDATE campaign_vehicles SET progress_rank = {rank} WHERE state = '{state}'")
    with op.batch_alter_table("campaign_events") as batch:
        batch.alter_column("state", type_=sa.String(length=32), existing_type=sa.String(length=16))
        batch.add_column(sa.Column("deferrals", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("source", sa.String(length=16), server_default="car", nullable=False))
        batch.drop_constraint("uq_campaign_events_step", type_="unique")
        batch.create_unique_constraint(
            "uq_campaign_events_step", ["campaign_id", "vin", "attempt", "deferrals", "state"]
        )
    op.create_table(
        "notice_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notice_log_campaign_vin", "notice_log", ["campaign_id", "vin"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_notice_log_campaign_vin", table_name="notice_log")
    op.drop_table("notice_log")
    with op.batch_alter_table("campaign_events") as batch:
        batch.drop_constraint("uq_campaign_events_step", type_="unique")
    # Deferrals beyond the first of an attempt cannot fit the old key.
    op.execute(
        "DELETE FROM campaign_events WHERE id NOT IN "
        "(SELECT MIN(id) FROM campaign_events GROUP BY campaign_id, vin, attempt, state)"
    )
    with op.batch_alter_table("campaign_events") as batch:
        batch.create_unique_constraint("uq_campaign_events_step", ["campaign_id", "vin", "attempt", "state"])
        batch.drop_column("source")
        batch.drop_column("deferrals")
    with op.batch_alter_table("campaign_vehicles") as batch:
        batch.drop_index("ix_campaign_vehicles_campaign_state")
        for column in (
            "evidence_ref",
            "recorded_by",
            "next_retry_at",
            "retries",
            "released_at",
            "progress_rank",
            "deferrals",
            "wave",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("campaigns") as batch:
        for column in (
            "status_changed_at",
            "error_baseline",
            "current_wave",
            "status_reason",
            "status",
            "launch_population",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("recalls") as batch:
        for column in ("requires_consent", "dynamic", "rollout", "preconditions", "owner_notice", "remedy_type"):
            batch.drop_column(column)
    with op.batch_alter_table("vehicles") as batch:
        batch.drop_column("time_zone")
