"""The weekly VIN-level status feed: every car of the recall, its status at the week's end and since when."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from ota_server.reports.common import Report, launched_campaign, recall_meta, recall_of, standings, week

COLUMNS = ("vin", "recall_number", "status", "reason", "status_date")


def build(session: Session, recall_id: int, now: datetime, week_label: str | None = None) -> Report:
    recall = recall_of(session, recall_id)
    campaign = launched_campaign(session, recall)
    period = week(week_label, now)
    rows = [
        {
            "vin": car.vin,
            "recall_number": recall.campaign_number,
            "status": car.state,
            "reason": car.reason,
            # No event yet: the car has been in the recall since the launch.
            "status_date": (car.since or campaign.launched_at).date().isoformat(),
        }
        for car in standings(session, campaign, period.end)
    ]
    meta = {**recall_meta(recall, campaign, now), "week": period.label, "period_end": period.end.isoformat()}
    return Report("vin-status", meta, COLUMNS, rows, {"vehicles": len(rows)})
