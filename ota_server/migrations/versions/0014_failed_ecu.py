"""The ECU a car's failure report names, and the recall's multi-ECU failure policy.

``campaign_vehicles.failed_ecu``:
The agent puts the failing ECU's serial in its report's ``ecu_serial``; per-ECU progress and
the failure breakdown read it (the 'ECU <serial>:' in the detail only for an older agent's
report, which leaves it empty). Existing rows stay empty: their detail still names the ECU.
``recalls.ecu_failure_policy``: all_or_nothing (every existing recall's behaviour, the default)
or keep_successful.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 11:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaign_vehicles", recreate="never") as batch:
        batch.add_column(sa.Column("failed_ecu", sa.String(length=64), nullable=True))
    with op.batch_alter_table("recalls", recreate="never") as batch:
        batch.add_column(
            sa.Column("ecu_failure_policy", sa.String(length=16), nullable=False, server_default="all_or_nothing")
        )


def downgrade() -> None:
    with op.batch_alter_table("recalls", recreate="never") as batch:
        batch.drop_column("ecu_failure_policy")
    with op.batch_alter_table("campaign_vehicles", recreate="never") as batch:
        batch.drop_column("failed_ecu")
