"""The quarterly completion report of one recall: where its cars stood at the quarter's end.

Every car involved is in exactly one bucket, so the buckets add up to ``involved``:
remedied over the air, remedied at a dealer, inspected and not needed, unreachable (by
reason), failed (failed, rolled back or timed out, awaiting a retry or a dealer), declined,
withdrawn (campaign cancelled) and still open (not yet notified, notified, installing).
``*_in_quarter`` counts the remedies recorded during the quarter itself.
``remedies_confirmed_by_manifest`` counts the remedied cars (over the air or at a dealer) whose
own version manifests, by the quarter's end, show the fix on every affected ECU.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ota_server.db.models import CampaignEcu, RecallRelease, Release
from ota_server.domain.states import ERRORS, UnreachableReason, VinState
from ota_server.regulator.common import (
    RegulatorReport,
    Standing,
    installed_as_of,
    launched_campaign,
    quarter,
    recall_meta,
    recall_of,
    standings,
)

COLUMNS = ("measure", "count")
_BUCKETS = {
    VinState.REMEDIED.value: "remedied_ota",
    VinState.REMEDIED_AT_DEALER.value: "remedied_at_dealer",
    VinState.INSPECTED_NOT_NEEDED.value: "inspected_not_needed",
    VinState.DECLINED.value: "declined",
    VinState.WITHDRAWN.value: "withdrawn",
    **{state.value: "failed" for state in ERRORS},
}
_REMEDIES = ("remedied_ota", "remedied_at_dealer", "inspected_not_needed")


def build(session: Session, recall_id: int, now: datetime, quarter_label: str | None = None) -> RegulatorReport:
    recall = recall_of(session, recall_id)
    campaign = launched_campaign(session, recall)
    period = quarter(quarter_label, now)
    cars = standings(session, campaign, period.end)
    counts = dict.fromkeys(("remedied_ota", "remedied_at_dealer", "inspected_not_needed"), 0)
    in_quarter = dict.fromkeys(_REMEDIES, 0)
    unreachable = {reason.value: 0 for reason in UnreachableReason}
    rest = {"failed": 0, "declined": 0, "withdrawn": 0, "open": 0}
    for car in cars:
        if car.state == VinState.UNREACHABLE.value:
            reason = car.reason if car.reason in unreachable else UnreachableReason.OTHER.value
            unreachable[reason] += 1
            continue
        bucket = _BUCKETS.get(car.state, "open")
        if bucket in counts:
            counts[bucket] += 1
            if car.since is not None and period.start <= car.since < period.end:
                in_quarter[bucket] += 1
        else:
            rest[bucket] += 1
    summary: dict[str, Any] = {
        "involved": len(cars),
        **counts,
        "unreachable": sum(unreachable.values()),
        "unreachable_by_reason": unreachable,
        **rest,
        "remedied_in_quarter": {name: in_quarter[name] for name in _REMEDIES},
        "completion_rate": round(sum(counts.values()) / len(cars), 4) if cars else 0.0,
        "remedies_confirmed_by_manifest": _confirmed(session, recall.id, cars, period.end),
    }
    rows: list[dict[str, Any]] = [{"measure": "involved", "count": len(cars)}]
    rows += [{"measure": name, "count": n} for name, n in counts.items()]
    rows += [{"measure": f"unreachable_{reason}", "count": n} for reason, n in unreachable.items()]
    rows += [{"measure": name, "count": n} for name, n in rest.items()]
    rows += [{"measure": f"{name}_in_quarter", "count": n} for name, n in in_quarter.items()]
    rows.append({"measure": "remedies_confirmed_by_manifest", "count": summary["remedies_confirmed_by_manifest"]})
    by_ecu = _ecus_by_hardware(session, campaign.id, cars)
    if by_ecu:
        summary["ecus_by_hardware"] = by_ecu
        rows += [
            {"measure": f"ecus_{hardware_id}_{name}", "count": n}
            for hardware_id, counts_of in by_ecu.items()
            for name, n in counts_of.items()
        ]
    meta = {
        **recall_meta(recall, campaign, now),
        "quarter": period.label,
        "period_start": period.start.isoformat(),
        "period_end": period.end.isoformat(),
    }
    return RegulatorReport("completion", meta, COLUMNS, rows, summary)


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
