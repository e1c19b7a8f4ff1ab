"""Per-update records for type approval (UNECE R156 style) of a recall's remedy releases.

Purpose, affected systems (hardware ids), integrity hashes (the signed bundle's and the image's
sha256), the target VINs and, for each, a compatibility check against its last known
configuration: the registered ECU with the release's hardware id and its installed version,
against the recall's installed-version range.

Per VIN and ECU it records the update itself: the version before (the car's last manifest
before the launch, else the version declared at registration), the version after (the car's
last manifest; a car remedied by its signed report but silent since: the release), the install
time and outcome, and the RXSWIN before and after (the RXSWIN the release of that version
declares; ``none declared`` when it declares none). The compatibility check judges the
version the update was applied to (before).

A multi-ECU recall installs one release per hardware id: each release gets its rows (per VIN,
the car's ECUs of that release's hardware), with that release's version, hashes and RXSWIN.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from packaging.version import InvalidVersion, Version
from sqlalchemy import select
from sqlalchemy.orm import Session

from ota_server.db.models import CampaignVehicle, Ecu, EcuReport, Release, Vehicle
from ota_server.domain.states import ERRORS, SUCCESS, VinState
from ota_server.regulator.common import RegulatorReport, launched_campaign, recall_meta, recall_of
from ota_server.services.population import releases_of

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
    "version_before",
    "version_after",
    "version_source",
    "install_time",
    "outcome",
    "rxswin_before",
    "rxswin_after",
)
NONE_DECLARED = "none declared"
_ENDED = SUCCESS | ERRORS
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


def build(session: Session, recall_id: int, now: datetime) -> RegulatorReport:
    recall = recall_of(session, recall_id)
    campaign = launched_campaign(session, recall)
    primary = session.get(Release, campaign.release_id)
    assert primary is not None  # foreign key
    releases = releases_of(session, recall) or [primary]
    criteria = recall.population or {}
    versions = criteria.get("installed_versions") or {}
    low, high = versions.get("min"), versions.get("max")
    cars = {
        cv.vin: cv
        for cv in session.scalars(
            select(CampaignVehicle).where(CampaignVehicle.campaign_id == campaign.id).order_by(CampaignVehicle.vin)
        )
    }
    vins = list(cars)
    vehicles = {v.vin: v for v in session.scalars(select(Vehicle).where(Vehicle.vin.in_(vins)))}
    before = _before_launch(session, vins, campaign.launched_at)
    # population.hardware_id overrides a single release's hardware (several releases refuse it)
    hardware_of = {
        r.id: (criteria.get("hardware_id") if len(releases) == 1 else None) or r.hardware_id for r in releases
    }
    rxswins = {
        (r.hardware_id, r.version): r.rxswin
        for r in session.scalars(select(Release).where(Release.hardware_id.in_({r.hardware_id for r in releases})))
    }
    rows: list[dict[str, Any]] = []
    for vin in vins:
        vehicle = vehicles.get(vin)
        cv = cars[vin]
        for release in releases:
            hardware_id = hardware_of[release.id]
            ecus: list[Ecu | None] = [e for e in vehicle.ecus if e.hardware_id == hardware_id] if vehicle else []
            rows.extend(_rows(recall.campaign_number, release, cv, ecus, before, rxswins, low, high))
    update = {
        "purpose": {"title": recall.title, "defect": recall.defect, "remedy": recall.remedy},
        "affected_systems": sorted({h for r in releases for h in (hardware_of[r.id], r.hardware_id)}),
        "rxswin": [r.rxswin for r in releases if r.rxswin],
        "release": _release_meta(primary),
        "releases": [_release_meta(r) for r in releases],
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
    return RegulatorReport(
        "type-approval", {**recall_meta(recall, campaign, now), "update": update}, COLUMNS, rows, summary
    )


def _rows(
    recall_number: str,
    release: Release,
    cv: CampaignVehicle,
    ecus: list[Ecu | None],
    before: dict[tuple[str, str], str],
    rxswins: dict[tuple[str, str], str | None],
    low: str | None,
    high: str | None,
) -> list[dict[str, Any]]:
    """One car's rows for one release: each of its ECUs of that hardware (one row saying none matched)."""
    common = {
        "recall_number": recall_number,
        "release_version": release.version,
        "hardware_id": release.hardware_id,
        "bundle_sha256": release.sha256,
        "image_sha256": release.image_sha256 or "",
        "rxswin": release.rxswin or NONE_DECLARED,
    }
    state = VinState(cv.state)
    rows = []
    for ecu in ecus or [None]:
        was = (before.get((cv.vin, ecu.serial)) or ecu.declared_version or ecu.installed_version) if ecu else None
        after, source = _after(ecu, cv, release) if ecu else (None, "no matching ECU")
        result = check(was, release.version, low, high)
        rows.append(
            {
                **common,
                "vin": cv.vin,
                "ecu_serial": ecu.serial if ecu else None,
                "ecu_hardware_id": ecu.hardware_id if ecu else None,
                "installed_version": ecu.installed_version if ecu else None,
                "check": result,
                "compatible": result in COMPATIBLE,
                "version_before": was,
                "version_after": after,
                "version_source": source,
                "install_time": cv.updated_at.isoformat() if state in _ENDED else None,
                "outcome": cv.state if not cv.reason else f"{cv.state} ({cv.reason})",
                "rxswin_before": (rxswins.get((release.hardware_id, was)) if was else None) or NONE_DECLARED,
                "rxswin_after": (rxswins.get((release.hardware_id, after)) if after else None) or NONE_DECLARED,
            }
        )
    return rows


def _release_meta(release: Release) -> dict[str, Any]:
    return {
        "id": release.id,
        "hardware_id": release.hardware_id,
        "version": release.version,
        "release_counter": release.release_counter,
        "target_path": release.target_path,
        "length": release.length,
        "bundle_sha256": release.sha256,
        "image_sha256": release.image_sha256,
        "image_size": release.image_size,
    }


def _before_launch(session: Session, vins: list[str], launched_at: datetime) -> dict[tuple[str, str], str]:
    """(VIN, ECU serial) -> the version the car's last manifest before the launch reported."""
    found: dict[tuple[str, str], str] = {}
    for start in range(0, len(vins), 500):
        rows = session.execute(
            select(EcuReport.vin, EcuReport.ecu_serial, EcuReport.version)
            .where(EcuReport.vin.in_(vins[start : start + 500]), EcuReport.received_at < launched_at)
            .order_by(EcuReport.id)
        )
        for vin, serial, version in rows:
            found[(vin, serial)] = version  # the last one wins
    return found


def _after(ecu: Ecu, cv: CampaignVehicle, release: Release) -> tuple[str, str]:
    """What the ECU runs now and on whose word: its manifest, else a remedied report, else registration."""
    remedied = VinState(cv.state) is VinState.REMEDIED
    # The car's install manifest may arrive just before its remedied report: one showing the fix counts.
    shows_fix = ecu.installed_version == release.version
    if ecu.reported_at is not None and (shows_fix or not (remedied and ecu.reported_at < cv.updated_at)):
        return ecu.installed_version, f"manifest {ecu.reported_at.isoformat()}"
    if remedied:
        return release.version, "remedied report"
    return ecu.installed_version, "declared at registration"
