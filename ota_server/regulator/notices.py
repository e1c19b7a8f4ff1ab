"""The owner-notification log of a recall: every notice and withdrawal the broker accepted, per VIN.

Covers the remedy campaign and any rollback campaign it launched, oldest first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ota_server.db.models import Campaign, NoticeLog
from ota_server.regulator.common import RegulatorReport, recall_meta, recall_of
from ota_server.services.campaigns import remedy_campaign

COLUMNS = ("published_at", "vin", "recall_number", "campaign_id", "campaign_kind", "notice_kind", "nonce")


def build(session: Session, recall_id: int, now: datetime) -> RegulatorReport:
    recall = recall_of(session, recall_id)
    query = (
        select(NoticeLog, Campaign.kind)
        .join(Campaign, Campaign.id == NoticeLog.campaign_id)
        .where(Campaign.recall_id == recall.id)
        .order_by(NoticeLog.published_at, NoticeLog.id)
    )
    rows: list[dict[str, Any]] = [
        {
            "published_at": entry.published_at.isoformat(),
            "vin": entry.vin,
            "recall_number": recall.campaign_number,
            "campaign_id": entry.campaign_id,
            "campaign_kind": kind,
            "notice_kind": entry.kind,
            "nonce": entry.nonce,
        }
        for entry, kind in session.execute(query)
    ]
    summary = {
        "entries": len(rows),
        "vehicles_notified": len({row["vin"] for row in rows if row["notice_kind"] == "campaign"}),
        "withdrawals": sum(1 for row in rows if row["notice_kind"] == "withdrawal"),
    }
    return RegulatorReport(
        "notices", recall_meta(recall, remedy_campaign(session, recall.id), now), COLUMNS, rows, summary
    )
