"""The owner-notification log: what each owner was told, when and through which channel.

``owner_notifications``: one row per notice, reminder, withdrawal, consent request or answer
and owner letter, with the full text (or only its sha256) and the channel (mqtt, letter,
email, owner_page, head_unit, cli). Every MQTT notice and withdrawal already in
``notice_log`` is copied in (channel mqtt; the text is the message the broker accepted).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 13:20:00.000000
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS = {"campaign": "notice", "withdrawal": "withdrawal"}


def upgrade() -> None:
    op.create_table(
        "owner_notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recall_id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("text_sha256", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.String(length=200), nullable=False, server_default=""),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_by", sa.String(length=200), nullable=False, server_default=""),
        sa.ForeignKeyConstraint(["recall_id"], ["recalls.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_owner_notifications_recall", "owner_notifications", ["recall_id", "id"], unique=False)
    op.create_index("ix_owner_notifications_vin", "owner_notifications", ["vin", "at"], unique=False)
    rows = op.get_bind().execute(
        sa.text(
            "SELECT c.recall_id, n.campaign_id, n.vin, n.kind, n.payload, n.published_at FROM notice_log n"
            " JOIN campaigns c ON c.id = n.campaign_id ORDER BY n.id"
        )
    )
    now = datetime.now(UTC).isoformat()
    copied = []
    for recall_id, campaign_id, vin, kind, payload, published_at in rows:
        body = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True)
        copied.append(
            {
                "recall_id": recall_id,
                "campaign_id": campaign_id,
                "vin": vin,
                "kind": _KINDS.get(kind, kind),
                "channel": "mqtt",
                "text": body,
                "text_sha256": hashlib.sha256(body.encode()).hexdigest(),
                "detail": "",
                "at": published_at,
                "recorded_at": now,
                "recorded_by": "",
            }
        )
    if copied:  # plain SQL: published_at goes back as the driver gave it (a string on SQLite)
        columns = ", ".join(copied[0])
        values = ", ".join(f":{c}" for c in copied[0])
        op.get_bind().execute(sa.text(f"INSERT INTO owner_notifications ({columns}) VALUES ({values})"), copied)


def downgrade() -> None:
    op.drop_index("ix_owner_notifications_vin", table_name="owner_notifications")
    op.drop_index("ix_owner_notifications_recall", table_name="owner_notifications")
    op.drop_table("owner_notifications")
