"""A car's campaigns by VIN: an index on ``campaign_vehicles(vin)``.

Ingest's manifests lock a car's rows in every campaign by VIN alone
(:func:`ota_server.services.inventory.apply_manifests`), as do the VIN page and the owner's
look-up; the primary key leads with the campaign, so each such query scanned the whole table,
once per ingest batch: linear in the fleet per batch, quadratic over a launch (issue 19).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-04 23:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_campaign_vehicles_vin", "campaign_vehicles", ["vin"])


def downgrade() -> None:
    op.drop_index("ix_campaign_vehicles_vin", table_name="campaign_vehicles")
