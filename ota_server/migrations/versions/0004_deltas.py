"""Delta updates: the image hash and size of each release, and the deltas built between releases.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("image_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("image_size", sa.BigInteger(), nullable=True))
    op.create_table(
        "deltas",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("base_image_sha256", sa.String(length=64), nullable=False),
        sa.Column("target_path", sa.String(length=255), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("release_id", "base_image_sha256", name="uq_deltas_release_base"),
        sa.UniqueConstraint("target_path"),
    )
    op.create_index(op.f("ix_deltas_release_id"), "deltas", ["release_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_deltas_release_id"), table_name="deltas")
    op.drop_table("deltas")
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("image_size")
        batch.drop_column("image_sha256")
