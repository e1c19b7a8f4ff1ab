"""Per-update records for type approval (UNECE R156 style) of a recall's remedy release.

Purpose, affected systems (hardware ids), integrity hashes (the signed bundle's and the image's
sha256), the target VINs and, for each, a compatibility check against its last known
configuration: the registered ECU with the release's hardware id and its installed version,
against the recall's installed-version range.

RXSWIN: the data model has no RXSWIN identifiers yet, so ``rxswin`` is always empty (the
column is kept so the file's shape will not change when they are added).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from packaging.version import InvalidVersion, Version
from sqlalchemy import select
from sqlalchemy.orm import Session

from ota_server.db.models import CampaignVehicle, Ecu, Release, Vehicle
from ota_server.reports.common import Report, launched_campaign, recall_meta, recall_of

COLUMNS = (
    "recall_number",
    "release_version",
    "hardware_id",
    "bundle_sha256",
    "image_sha256",
    "rxswin",
    "vin",
    "ecu_serial",
    "ecu_hardware_id",
    "installed_version",
    "check",
    "compatible",
)
COMPATIBLE = frozenset({"compatible", "already_updated"})


def _parse(raw: str | None) -> Version | None:
    try:
        return Version(raw) if raw else None
    except InvalidVersion:
        return None


def check(installed: str | None, release_version: str, low: str | None, high: str | None) -> str:
    """compatible, already_updated, no_matching_ecu, version_out_of_range or unknown_version."""
    if installed is None:
        return "no_matching_ecu"
    version = _parse(installed)
    if installed == release_version or (version is not None and version == _parse(release_version)):
        return "already_updated"
    if version is None:
        return "unknown_version"
    low_v, high_v = _parse(low), _parse(high)
    if (low_v is not None and version < low_v) or (high_v is not None and version > high_v):
        return "version_out_of_range"
    return "compatible"


def build(session: Session, recall_id: int, now: datetime) -> Report:
    recall = recall_of(session, recall_id)
    campaign = launched_campaign(session, recall)
    release = session.get(Release, campaign.release_id)
    assert release is not None  # foreign key
    criteria = recall.population or {}
    hardware_id = criteria.get("hardware_id") or release.hardware_id
    versions = criteria.get("installed_versions") or {}
    low, high = versions.get("min"), versions.get("max")
    vins = session.scalars(
        select(CampaignVehicle.vin).where(CampaignVehicle.campaign_id == campaign.id).order_by(CampaignVehicle.vin)
    ).all()
    vehicles = {v.vin: v for v in session.scalars(select(Vehicle).where(Vehicle.vin.in_(vins)))}
    common = {
        "recall_number": recall.campaign_number,
        "release_version": release.version,
        "hardware_id": release.hardware_id,
        "bundle_sha256": release.sha256,
        "image_sha256": release.image_sha256 or "",
        "rxswin": "",
    }
    rows: list[dict[str, Any]] = []
    for vin in vins:
        vehicle = vehicles.get(vin)
        ecus: list[Ecu | None] = [e for e in vehicle.ecus if e.hardware_id == hardware_id] if vehicle else []
        for ecu in ecus or [None]:
            result = check(ecu.installed_version if ecu else None, release.version, low, high)
            rows.append(
                {
                    **common,
                    "vin": vin,
                    "ecu_serial": ecu.serial if ecu else None,
                    "ecu_hardware_id": ecu.hardware_id if ecu else None,
                    "installed_version": ecu.installed_version if ecu else None,
                    "check": result,
                    "compatible": result in COMPATIBLE,
                }
            )
    update = {
        "purpose": {"title": recall.title, "defect": recall.defect, "remedy": recall.remedy},
        "affected_systems": sorted({hardware_id, release.hardware_id}),
        "rxswin": [],
        "release": {
            "id": release.id,
            "hardware_id": release.hardware_id,
            "version": release.version,
            "release_counter": release.release_counter,
            "target_path": release.target_path,
            "length": release.length,
            "bundle_sha256": release.sha256,
            "image_sha256": release.image_sha256,
            "image_size": release.image_size,
        },
        "installed_version_range": {"min": low, "max": high},
    }
    results: dict[str, int] = {}
    for row in rows:
        results[row["check"]] = results.get(row["check"], 0) + 1
    summary = {
        "target_vins": len(vins),
        "ecus_checked": len(rows),
        "compatible": sum(1 for row in rows if row["compatible"]),
        "by_check": results,
    }
    return Report("type-approval", {**recall_meta(recall, campaign, now), "update": update}, COLUMNS, rows, summary)
