"""Vehicle certificates: every client certificate issued to a car, and when it was revoked.

Re-provisioning, ``ota vehicles revoke`` and a car's renewal revoke the previous
certificate; the broker's CRL is built from the revoked rows. The serial each car holds
today (``vehicles.certificate_serial``) is copied in as its first, unrevoked, row.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "vehicle_certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vehicle_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("certificate", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["vehicle_id"], ["vehicles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("serial"),
    )
    op.create_index(op.f("ix_vehicle_certificates_vehicle_id"), "vehicle_certificates", ["vehicle_id"], unique=False)
    op.create_index(op.f("ix_vehicle_certificates_revoked_at"), "vehicle_certificates", ["revoked_at"], unique=False)
    op.execute(
        "INSERT INTO vehicle_certificates (vehicle_id, serial, issued_at) "
        "SELECT id, certificate_serial, provisioned_at FROM vehicles "
        "WHERE certificate_serial IS NOT NULL AND provisioned_at IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_vehicle_certificates_revoked_at"), table_name="vehicle_certificates")
    op.drop_index(op.f("ix_vehicle_certificates_vehicle_id"), table_name="vehicle_certificates")
    op.drop_table("vehicle_certificates")
