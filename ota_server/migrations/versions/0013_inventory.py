"""The inventory from the car's own word: per-ECU reported state, its history, discrepancies.

``ecus.declared_version`` keeps what registration said (filled in from ``installed_version``
for every existing ECU: no car has sent a manifest yet); ``installed_version`` becomes the
car's reported version once it sends one. ``vehicles.manifest_counter`` refuses an older or
replayed manifest. ``releases.rxswin`` is the RXSWIN a release brings (UNECE R156 record).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 11:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vehicles", recreate="never") as batch:
        batch.add_column(sa.Column("manifest_counter", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("manifest_digest", sa.String(length=64), nullable=True))
    with op.batch_alter_table("ecus", recreate="never") as batch:
        batch.add_column(sa.Column("declared_version", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("installed_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("installed_length", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("installed_target", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("installed_release_counter", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("reported_hardware_id", sa.String(length=64), nullable=True))
    op.execute("UPDATE ecus SET declared_version = installed_version")
    with op.batch_alter_table("releases", recreate="never") as batch:
        batch.add_column(sa.Column("rxswin", sa.String(length=64), nullable=True))
    op.create_table(
        "ecu_reports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("ecu_serial", sa.String(length=64), nullable=False),
        sa.Column("hardware_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("release_counter", sa.Integer(), nullable=True),
        sa.Column("image_sha256", sa.String(length=64), nullable=True),
        sa.Column("image_length", sa.BigInteger(), nullable=True),
        sa.Column("target_path", sa.String(length=255), nullable=True),
        sa.Column("manifest_counter", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ecu_reports_vin_received", "ecu_reports", ["vin", "received_at"])
    op.create_table(
        "discrepancies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("ecu_serial", sa.String(length=64), nullable=False),
        sa.Column("hardware_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=True),
        sa.Column("campaign_id", sa.Integer(), sa.ForeignKey("campaigns.id", ondelete="SET NULL"), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("manifest_counter", sa.BigInteger(), nullable=False),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_discrepancies_vin", "discrepancies", ["vin"])
    op.create_index("ix_discrepancies_kind", "discrepancies", ["kind"])


def downgrade() -> None:
    op.drop_index("ix_discrepancies_kind", table_name="discrepancies")
    op.drop_index("ix_discrepancies_vin", table_name="discrepancies")
    op.drop_table("discrepancies")
    op.drop_index("ix_ecu_reports_vin_received", table_name="ecu_reports")
    op.drop_table("ecu_reports")
    with op.batch_alter_table("releases", recreate="never") as batch:
        batch.drop_column("rxswin")
    with op.batch_alter_table("ecus", recreate="never") as batch:
        for column in (
            "reported_hardware_id",
            "installed_release_counter",
            "installed_target",
            "installed_length",
            "installed_sha256",
            "reported_at",
            "declared_version",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("vehicles", recreate="never") as batch:
        batch.drop_column("manifest_digest")
        batch.drop_column("manifest_counter")
