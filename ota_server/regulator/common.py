"""What every report shares: the table it renders to CSV and JSON, and the as-of state of a car."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ota_server.db.models import Campaign, CampaignEvent, CampaignVehicle, Ecu, EcuReport, Recall, Vehicle
from ota_server.domain.states import SUCCESS, VinState
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.services.campaigns import remedy_campaign


@dataclass
class RegulatorReport:
    """A regulator report document (not a car's status report): header facts (``meta``), optional
    ``summary`` counts and a table of rows."""

    kind: str
    meta: dict[str, Any]
    columns: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind, **self.meta}
        if self.summary:
            body["summary"] = self.summary
        body["rows"] = self.rows
        return body

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: cell_text(row.get(k)) for k in self.columns})
        return out.getvalue()


@dataclass(frozen=True)
class Issuer:
    """Who files a report: the manufacturer (configuration) and the person who asked for it
    (the API token's name, or the scheduled export)."""

    manufacturer: str
    submitted_by: str

    def meta(self, now: datetime) -> dict[str, Any]:
        return {
            "manufacturer": self.manufacturer,
            "submitted_by": self.submitted_by,
            "submitted_on": now.date().isoformat(),
        }


def cell_text(value: Any) -> str:
    """A value as one CSV or PDF table cell shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def recall_of(session: Session, recall_id: int) -> Recall:
    recall = session.get(Recall, recall_id)
    if recall is None:
        raise NotFound(f"no recall {recall_id}")
    return recall


def launched_campaign(session: Session, recall: Recall) -> Campaign:
    campaign = remedy_campaign(session, recall.id)
    if campaign is None:
        raise Conflict(f"recall {recall.campaign_number} has not been launched: no population to report on")
    return campaign


def recall_meta(recall: Recall, campaign: Campaign | None, generated_at: datetime) -> dict[str, Any]:
    return {
        "recall_id": recall.id,
        "recall_number": recall.campaign_number,  # the regulator's (e.g. NHTSA 24V-123)
        "manufacturer_number": recall.manufacturer_number,  # the manufacturer's own
        "title": recall.title,
        "campaign_id": campaign.id if campaign else None,
        "generated_at": generated_at.isoformat(),
    }


# --- periods -------------------------------------------------------------------------

_QUARTER = re.compile(r"^(\d{4})-?Q([1-4])$", re.IGNORECASE)
_WEEK = re.compile(r"^(\d{4})-?W(\d{2})$", re.IGNORECASE)


@dataclass(frozen=True)
class Period:
    label: str
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC


def quarter(label: str | None, now: datetime) -> Period:
    """``2026Q1`` (or ``2026-Q1``); None means the quarter containing ``now``."""
    if label is None:
        year, q = now.year, (now.month - 1) // 3 + 1
    else:
        match = _QUARTER.match(label.strip())
        if not match:
            raise InvalidInput(f"quarter {label!r}: expected YYYYQn, e.g. 2026Q1")
        year, q = int(match[1]), int(match[2])
    start = datetime(year, 3 * q - 2, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC) if q == 4 else datetime(year, 3 * q + 1, 1, tzinfo=UTC)
    return Period(f"{year}Q{q}", start, end)


def last_full_quarter(now: datetime) -> Period:
    """The quarter before the one containing ``now`` (the one a quarterly report is filed for)."""
    return quarter(None, quarter(None, now).start - timedelta(days=1))


def last_full_week(now: datetime) -> Period:
    """The ISO week before the one containing ``now``."""
    return week(None, week(None, now).start - timedelta(days=1))


def period_meta(period: Period, now: datetime) -> dict[str, Any]:
    """A period's bounds and whether it had ended when the report was made (False: to date)."""
    return {
        "period_start": period.start.isoformat(),
        "period_end": period.end.isoformat(),
        "period_complete": now >= period.end,
    }


def week(label: str | None, now: datetime) -> Period:
    """ISO week ``2026-W09``; None means the ISO week containing ``now``."""
    if label is None:
        year, number, _ = now.isocalendar()
    else:
        match = _WEEK.match(label.strip())
        if not match:
            raise InvalidInput(f"week {label!r}: expected YYYY-Www, e.g. 2026-W09")
        year, number = int(match[1]), int(match[2])
    try:
        monday = date.fromisocalendar(year, number, 1)
    except ValueError as exc:
        raise InvalidInput(f"week {label!r}: no such ISO week") from exc
    start = datetime.combine(monday, time(), tzinfo=UTC)
    return Period(f"{year}-W{number:02d}", start, start + timedelta(days=7))


# --- each car's state at a moment -----------------------------------------------------


@dataclass(frozen=True)
class Standing:
    vin: str
    state: str
    reason: str | None
    since: datetime | None  # when the car reached ``state`` (None: no event yet)


def standings(session: Session, campaign: Campaign, at: datetime) -> list[Standing]:
    """Each car's state just before ``at`` (exclusive), VIN order.

    A car whose current row was last updated before ``at`` is taken as is; otherwise its event
    history is replayed up to ``at``, where a success (OTA, dealer, inspection) is never undone by
    a later report, as in the state machine.
    """
    cars = session.scalars(
        select(CampaignVehicle).where(CampaignVehicle.campaign_id == campaign.id).order_by(CampaignVehicle.vin)
    ).all()
    stale = {cv.vin for cv in cars if cv.updated_at >= at}
    history: dict[str, list[CampaignEvent]] = {}
    if stale:
        events = session.scalars(
            select(CampaignEvent)
            .where(CampaignEvent.campaign_id == campaign.id, CampaignEvent.received_at < at)
            .order_by(CampaignEvent.received_at, CampaignEvent.id)
        )
        for event in events:
            if event.vin in stale:
                history.setdefault(event.vin, []).append(event)
    success = {s.value for s in SUCCESS}
    result = []
    for cv in cars:
        if cv.vin not in stale:
            result.append(Standing(cv.vin, cv.state, cv.reason, cv.updated_at))
            continue
        state, reason, since = VinState.PENDING.value, None, None
        for event in history.get(cv.vin, []):
            if state in success and event.state not in success:
                continue
            state, reason, since = event.state, event.reason, event.received_at
        result.append(Standing(cv.vin, state, reason, since))
    return result


@dataclass(frozen=True)
class Installed:
    """What one ECU ran at a time, by the car's word (its last manifest by then) or its registration."""

    hardware_id: str
    version: str
    reported_at: datetime | None  # None: declared at registration (no manifest by then)


def installed_as_of(session: Session, vins: list[str], at: datetime) -> dict[str, dict[str, Installed]]:
    """VIN -> ECU serial -> what it ran at ``at``: the last manifest received by then, else as declared."""
    found: dict[str, dict[str, Installed]] = {}
    for start in range(0, len(vins), 500):
        chunk = vins[start : start + 500]
        for vin, ecu in session.execute(
            select(Vehicle.vin, Ecu).join(Ecu, Ecu.vehicle_id == Vehicle.id).where(Vehicle.vin.in_(chunk))
        ).all():
            found.setdefault(vin, {})[ecu.serial] = Installed(
                ecu.hardware_id, ecu.declared_version or ecu.installed_version, None
            )
        for report in session.scalars(
            select(EcuReport)
            .where(EcuReport.vin.in_(chunk), EcuReport.received_at <= at)
            .order_by(EcuReport.id)  # the last one wins
        ):
            ecus = found.setdefault(report.vin, {})
            hardware_id = ecus[report.ecu_serial].hardware_id if report.ecu_serial in ecus else report.hardware_id
            ecus[report.ecu_serial] = Installed(hardware_id, report.version, report.received_at)
    return found
