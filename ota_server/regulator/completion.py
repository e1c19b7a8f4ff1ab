"""The quarterly completion report of one recall (49 CFR 573.7 style): where its cars stood at the quarter's end.

Header: the manufacturer, the regulator's and the manufacturer's recall numbers, the quarter,
the date owner notification began (and was completed, once every car was notified), who
submitted the report and when (:class:`~ota_server.regulator.common.Issuer`, added by
:func:`ota_server.regulator.build`).

Every car involved is in exactly one bucket, so the buckets add up to ``involved``:
remedied over the air, remedied at a dealer, inspected and not needed, unreachable (by
reason), failed (failed, rolled back or timed out, awaiting a retry or a dealer), declined,
withdrawn (campaign cancelled) and still open (not yet notified, notified, installing).
``removed_from_population`` is, in the VIN feed's words, the cars removed (inspected and not
needed, recall withdrawn) by reason. Each measure is given cumulatively (at the quarter's
end) and for the quarter itself (the cars that reached it during the quarter).
``remedies_confirmed_by_manifest`` counts the remedied cars (over the air or at a dealer) whose
own version manifests, by the quarter's end, show the fix on every affected ECU.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ota_server.db.models import Campaign, CampaignEcu, NoticeLog, OwnerNotification, RecallRelease, Release
from ota_server.domain.states import ERRORS, UnreachableReason, VinState
from ota_server.regulator.common import (
    Period,
    RegulatorReport,
    Standing,
    installed_as_of,
    launched_campaign,
    period_meta,
    quarter,
    recall_meta,
    recall_of,
    standings,
)
from ota_server.regulator.wording import REMOVED, REMOVED_REASONS, regulator_wording

COLUMNS = ("measure", "cumulative", "in_quarter")
_BUCKETS = {
    VinState.REMEDIED.value: "remedied_ota",
    VinState.REMEDIED_AT_DEALER.value: "remedied_at_dealer",
    VinState.INSPECTED_NOT_NEEDED.value: "inspected_not_needed",
    VinState.DECLINED.value: "declined",
    VinState.WITHDRAWN.value: "withdrawn",
    **{state.value: "failed" for state in ERRORS},
}
_REMEDIES = ("remedied_ota", "remedied_at_dealer", "inspected_not_needed")
# What counts as telling an owner: a campaign notice the broker accepted, or a recorded owner notice or letter.
_OWNER_TOLD = ("notice", "letter")


def build(session: Session, recall_id: int, now: datetime, quarter_label: str | None = None) -> RegulatorReport:
    recall = recall_of(session, recall_id)
    campaign = launched_campaign(session, recall)
    period = quarter(quarter_label, now)
    cars = standings(session, campaign, period.end)

    def dated(car: Standing) -> bool:
        return car.since is not None and period.start <= car.since < period.end

    total: dict[str, int] = dict.fromkeys((*_REMEDIES, "failed", "declined", "withdrawn", "open"), 0)
    in_quarter: dict[str, int] = dict.fromkeys(total, 0)
    unreachable = {reason.value: 0 for reason in UnreachableReason}
    unreachable_in_quarter = dict.fromkeys(unreachable, 0)
    removed = dict.fromkeys(REMOVED_REASONS, 0)
    removed_in_quarter = dict.fromkeys(REMOVED_REASONS, 0)
    for car in cars:
        wording = regulator_wording(car.state, car.reason)
        if car.state == VinState.UNREACHABLE.value:
            unreachable[wording.reason] += 1
            unreachable_in_quarter[wording.reason] += dated(car)
            continue
        if wording.status == REMOVED:
            removed[wording.reason] += 1
            removed_in_quarter[wording.reason] += dated(car)
        bucket = _BUCKETS.get(car.state, "open")
        total[bucket] += 1
        in_quarter[bucket] += bucket != "open" and dated(car)
    notified = _first_notified(session, recall.id, period)
    involved = {car.vin for car in cars}
    told = {vin: at for vin, at in notified.items() if vin in involved}
    remedied = sum(total[name] for name in _REMEDIES)
    summary: dict[str, Any] = {
        "involved": len(cars),
        **{name: total[name] for name in _REMEDIES},
        "unreachable": sum(unreachable.values()),
        "unreachable_by_reason": unreachable,
        **{name: total[name] for name in ("failed", "declined", "withdrawn", "open")},
        "removed_from_population": {"total": sum(removed.values()), "by_reason": removed},
        "owners_notified": len(told),
        "owners_notified_in_quarter": sum(1 for at in told.values() if at >= period.start),
        "owners_not_notified": len(cars) - len(told),  # 573.7's "failure to receive notification", so far
        "remedied_in_quarter": {name: in_quarter[name] for name in _REMEDIES},
        "unreachable_in_quarter": sum(unreachable_in_quarter.values()),
        "removed_in_quarter": sum(removed_in_quarter.values()),
        "completion_rate": round(remedied / len(cars), 4) if cars else 0.0,
        "remedies_confirmed_by_manifest": _confirmed(session, recall.id, cars, period.end),
    }
    rows: list[dict[str, Any]] = [
        {"measure": "involved", "cumulative": len(cars), "in_quarter": None},
        {"measure": "owners_notified", "cumulative": len(told), "in_quarter": summary["owners_notified_in_quarter"]},
        {"measure": "owners_not_notified", "cumulative": summary["owners_not_notified"], "in_quarter": None},
    ]
    rows += [{"measure": name, "cumulative": total[name], "in_quarter": in_quarter[name]} for name in _REMEDIES]
    rows += [
        {"measure": f"unreachable_{reason}", "cumulative": n, "in_quarter": unreachable_in_quarter[reason]}
        for reason, n in unreachable.items()
    ]
    rows += [
        {"measure": f"removed: {reason}", "cumulative": n, "in_quarter": removed_in_quarter[reason]}
        for reason, n in removed.items()
    ]
    rows += [
        {"measure": name, "cumulative": total[name], "in_quarter": in_quarter[name] if name != "open" else None}
        for name in ("failed", "declined", "withdrawn", "open")
    ]
    rows.append(
        {
            "measure": "remedies_confirmed_by_manifest",
            "cumulative": summary["remedies_confirmed_by_manifest"],
            "in_quarter": None,
        }
    )
    by_ecu = _ecus_by_hardware(session, campaign.id, cars)
    if by_ecu:
        summary["ecus_by_hardware"] = by_ecu
        rows += [
            {"measure": f"ecus_{hardware_id}_{name}", "cumulative": n, "in_quarter": None}
            for hardware_id, counts_of in by_ecu.items()
            for name, n in counts_of.items()
        ]
    first = min(notified.values(), default=None)
    complete = bool(cars) and len(told) == len(cars)
    meta = {
        **recall_meta(recall, campaign, now),
        "quarter": period.label,
        **period_meta(period, now),
        "owner_notification_began": first.date().isoformat() if first else None,
        "owner_notification_completed": max(told.values()).date().isoformat() if complete else None,
    }
    return RegulatorReport("completion", meta, COLUMNS, rows, summary)


def _first_notified(session: Session, recall_id: int, period: Period) -> dict[str, datetime]:
    """VIN -> when its owner was first told of the recall, up to the quarter's end."""
    first: dict[str, datetime] = {}
    notices = (
        select(NoticeLog.vin, func.min(NoticeLog.published_at))
        .join(Campaign, Campaign.id == NoticeLog.campaign_id)
        .where(Campaign.recall_id == recall_id, NoticeLog.kind == "campaign", NoticeLog.published_at < period.end)
        .group_by(NoticeLog.vin)
    )
    letters = (
        select(OwnerNotification.vin, func.min(OwnerNotification.at))
        .where(
            OwnerNotification.recall_id == recall_id,
            OwnerNotification.kind.in_(_OWNER_TOLD),
            OwnerNotification.at < period.end,
        )
        .group_by(OwnerNotification.vin)
    )
    for query in (notices, letters):
        for vin, at in session.execute(query).all():
            if vin not in first or at < first[vin]:
                first[vin] = at
    return first


def _ecus_by_hardware(session: Session, campaign_id: int, cars: list[Standing]) -> dict[str, dict[str, int]]:
    """A multi-ECU campaign's ECUs per hardware id: involved, remedied and failed with their car.

    Empty for a campaign of one hardware id (its ECUs are its cars) or one launched before
    ECUs were recorded per campaign.
    """
    ecus = session.execute(
        select(CampaignEcu.vin, CampaignEcu.hardware_id).where(CampaignEcu.campaign_id == campaign_id)
    ).all()
    if len({hardware_id for _, hardware_id in ecus}) < 2:
        return {}
    state = {car.vin: car.state for car in cars}
    out: dict[str, dict[str, int]] = {}
    for vin, hardware_id in sorted(ecus, key=lambda row: (row[1], row[0])):
        counts = out.setdefault(hardware_id, {"involved": 0, "remedied": 0, "failed": 0})
        bucket = _BUCKETS.get(state.get(vin, ""), "open")
        counts["involved"] += 1
        counts["remedied"] += bucket in _REMEDIES
        counts["failed"] += bucket == "failed"
    return out


def _confirmed(session: Session, recall_id: int, cars: list[Standing], at: datetime) -> int:
    """Remedied cars whose manifests by ``at`` show each affected ECU on its release's version."""
    remedied = [c.vin for c in cars if c.state in (VinState.REMEDIED.value, VinState.REMEDIED_AT_DEALER.value)]
    if not remedied:
        return 0
    fixes = dict(
        session.execute(
            select(Release.hardware_id, Release.version)
            .join(RecallRelease, RecallRelease.release_id == Release.id)
            .where(RecallRelease.recall_id == recall_id)
        ).all()
    )
    installed = installed_as_of(session, remedied, at)
    confirmed = 0
    for vin in remedied:
        affected = [e for e in installed.get(vin, {}).values() if e.hardware_id in fixes]
        if affected and all(e.reported_at is not None and e.version == fixes[e.hardware_id] for e in affected):
            confirmed += 1
    return confirmed
