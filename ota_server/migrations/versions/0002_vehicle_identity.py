"""Vehicle identity: the report-signing public key and the client certificate's serial.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vehicles") as batch:
        batch.add_column(sa.Column("report_keyid", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("report_key", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("certificate_serial", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("provisioned_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index(op.f("ix_vehicles_report_keyid"), ["report_keyid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("vehicles") as batch:
        batch.drop_index(op.f("ix_vehicles_report_keyid"))
        batch.drop_column("provisioned_at")
        batch.drop_column("certificate_serial")
        batch.drop_column("report_key")
        batch.drop_column("report_keyid")
