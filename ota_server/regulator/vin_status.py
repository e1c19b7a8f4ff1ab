"""The weekly VIN-level status feed: every car of the recall, its status at the week's end and since when.

``status`` and ``reason`` are in the regulator's words (:mod:`ota_server.regulator.wording`):
remedied, not remedied, unreachable or removed, never an internal state name. Each row names
its ISO week and the recall's numbers, so a row read on its own says what it is about.

``installed_versions`` is what each ECU ran at the week's end by the car's own word (its last
version manifest by then), else as declared at registration; ``reported_at`` says which.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from ota_server.regulator.common import (
    Installed,
    RegulatorReport,
    installed_as_of,
    launched_campaign,
    period_meta,
    recall_meta,
    recall_of,
    standings,
    week,
)
from ota_server.regulator.wording import STATUSES, regulator_wording

COLUMNS = (
    "iso_week",
    "recall_number",
    "manufacturer_recall_number",
    "vin",
    "status",
    "reason",
    "status_date",
    "installed_versions",
    "reported_at",
)


def _versions(ecus: dict[str, Installed]) -> str:
    return "; ".join(f"{e.hardware_id} {e.version}" for _, e in sorted(ecus.items()))


def _reported(ecus: dict[str, Installed]) -> str:
    times = [e.reported_at for e in ecus.values() if e.reported_at is not None]
    return max(times).isoformat() if times else "declared at registration"


def build(session: Session, recall_id: int, now: datetime, week_label: str | None = None) -> RegulatorReport:
    recall = recall_of(session, recall_id)
    campaign = launched_campaign(session, recall)
    period = week(week_label, now)
    cars = standings(session, campaign, period.end)
    installed = installed_as_of(session, [car.vin for car in cars], period.end)
    rows = []
    for car in cars:
        wording = regulator_wording(car.state, car.reason)
        rows.append(
            {
                "iso_week": period.label,
                "recall_number": recall.campaign_number,
                "manufacturer_recall_number": recall.manufacturer_number or "",
                "vin": car.vin,
                "status": wording.status,
                "reason": wording.reason,
                # No event yet: the car has been in the recall since the launch.
                "status_date": (car.since or campaign.launched_at).date().isoformat(),
                "installed_versions": _versions(installed.get(car.vin, {})),
                "reported_at": _reported(installed.get(car.vin, {})),
            }
        )
    meta = {**recall_meta(recall, campaign, now), "week": period.label, **period_meta(period, now)}
    by_status = {status: sum(1 for row in rows if row["status"] == status) for status in STATUSES}
    return RegulatorReport("vin-status", meta, COLUMNS, rows, {"vehicles": len(rows), **by_status})
