"""The inventory from the car's own word: what each ECU runs, as its signed version manifest says.

Ingest verifies a manifest like a report (its car's key, its VIN) and hands the verified ones
here, inside the batch's transaction. A manifest is accepted only when its counter is above
the last accepted one of its car, so an older or replayed manifest cannot move the record
back. An accepted one sets every ECU's installed version, image and target (``reported_at``
is the server's clock when it was received: the car's ``sent_at`` is kept in the history for
the record but never trusted for ordering), appends a history row per ECU and judges it:

- a discrepancy when the car runs an image no release of that hardware has, a version that is
  no release of its hardware and not its declared factory version, or another version than a
  campaign it completed installed (stored once per finding, audited, counted);
- the remedy, when it shows the fix of an open campaign the car never installed over the air
  (a workshop flash): the car becomes ``remedied_at_dealer`` with reason ``reported_by_manifest``.

Populations, the Director's assignment and the reports read ``ecus.installed_version``, so they
go by the car's word as soon as there is one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import get_args

from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware_bundles import topics
from firmware_bundles.messages import EcuManifest, VersionManifest
from ota_server.db.copy_rows import insert_rows
from ota_server.db.models import (
    Campaign,
    CampaignVehicle,
    Delta,
    Discrepancy,
    Ecu,
    EcuReport,
    RecallRelease,
    Release,
    Vehicle,
)
from ota_server.domain.states import ERRORS, NOT_STARTED, Cause, VinState, allowed
from ota_server.rollout import transitions
from ota_server.schemas import DiscrepancyKind, DiscrepancyPublic
from ota_server.schemas.listing import Page
from ota_server.services import audit, listing
from ota_server.services.population import Member, Reported

# Discrepancy kinds.
UNASSIGNED_IMAGE = "unassigned_image"
UNKNOWN_VERSION = "unknown_version"
REMEDIED_MISMATCH = "remedied_mismatch"
HARDWARE_MISMATCH = "hardware_mismatch"
UNKNOWN_ECU = "unknown_ecu"
IMAGE_CHANGED = "image_changed"
KINDS: tuple[str, ...] = get_args(DiscrepancyKind)

# Why a campaign car was counted remedied from its manifest rather than a campaign report.
REPORTED_BY_MANIFEST = "reported_by_manifest"
ALREADY_REMEDIED = "already_remedied"
MANIFEST_SOURCE = "manifest"  # campaign_events.source of the moves a manifest made

_CHUNK = 500
# A workshop flash is taken as the remedy only for a car the campaign has not started installing
# over the air (an OTA install in flight ends with the car's own remedied report).
_FLASHABLE = NOT_STARTED | ERRORS
_INSTALLED = frozenset({VinState.REMEDIED, VinState.REMEDIED_AT_DEALER})


@dataclass
class ManifestOutcome:
    """What one batch's manifests did."""

    accepted: int = 0
    duplicates: int = 0
    replayed: int = 0
    discrepancies: Counter[str] = field(default_factory=Counter)
    moved: set[int] = field(default_factory=set)  # campaigns where a car became remedied
    # A car's running software is new to the record (first manifest, or another version): a dynamic
    # campaign's population may now take it, so the engine should look at once.
    versions_changed: bool = False


@dataclass(frozen=True)
class _CampaignCar:
    cv: CampaignVehicle
    kind: str
    releases: dict[str, Release]  # hardware id -> the release the campaign installs on it


def digest(manifest: VersionManifest) -> str:
    """The sha256 of the manifest's signature: a redelivery of one manifest has the same one."""
    sig = manifest.signature.sig if manifest.signature is not None else ""
    return hashlib.sha256(sig.encode()).hexdigest()


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class _View:
    """What judging a batch of manifests needs, loaded with a few queries."""

    def __init__(self, session: Session, vins: Sequence[str], hardware_ids: set[str]) -> None:
        self.vehicles: dict[str, Vehicle] = {}
        self.campaign_cars: dict[str, list[_CampaignCar]] = {}
        self.findings: dict[tuple[str, str, str, str, str | None], Discrepancy] = {}
        for chunk in _chunks(vins):
            # Locked in VIN order, like the campaign rows of reports: two replicas holding one car's
            # manifests apply them one after the other, and the second sees the first's counter.
            for vehicle in session.scalars(
                select(Vehicle).where(Vehicle.vin.in_(chunk)).order_by(Vehicle.vin).with_for_update()
            ):
                self.vehicles[vehicle.vin] = vehicle
            for found in session.scalars(select(Discrepancy).where(Discrepancy.vin.in_(chunk))):
                self.findings[(found.vin, found.ecu_serial, found.kind, found.version, found.image_sha256)] = found
        hardware_ids = hardware_ids | {e.hardware_id for v in self.vehicles.values() for e in v.ecus}
        self.releases: dict[tuple[str, str], Release] = {
            (r.hardware_id, r.version): r
            for r in session.scalars(select(Release).where(Release.hardware_id.in_(sorted(hardware_ids))))
        }
        rows: list[tuple[CampaignVehicle, Campaign]] = []
        for chunk in _chunks(vins):
            rows.extend(
                (cv, campaign)
                for cv, campaign in session.execute(
                    select(CampaignVehicle, Campaign)
                    .join(Campaign, Campaign.id == CampaignVehicle.campaign_id)
                    .where(CampaignVehicle.vin.in_(chunk))
                    .order_by(CampaignVehicle.vin, CampaignVehicle.campaign_id)
                    .with_for_update(of=CampaignVehicle)
                ).all()
            )
        campaigns = {campaign.id: campaign for _, campaign in rows}
        installs = self._installs(session, campaigns.values())
        self._deltas: dict[int, set[str]] = {}
        release_ids = sorted({r.id for by_hw in installs.values() for r in by_hw.values()})
        if release_ids:
            for release_id, path in session.execute(
                select(Delta.release_id, Delta.target_path).where(Delta.release_id.in_(release_ids))
            ).all():
                self._deltas.setdefault(release_id, set()).add(path)
        for cv, campaign in rows:
            self.campaign_cars.setdefault(cv.vin, []).append(_CampaignCar(cv, campaign.kind, installs[campaign.id]))

    def targets_of(self, release: Release) -> set[str]:
        """The Image-repository targets a car installs ``release`` from: its bundle and its deltas."""
        return {release.target_path, *self._deltas.get(release.id, set())}

    @staticmethod
    def _installs(session: Session, campaigns: Iterable[Campaign]) -> dict[int, dict[str, Release]]:
        """Per campaign, the release it installs per hardware id (a rollback campaign: its one release)."""
        campaigns = list(campaigns)
        by_recall: dict[int, dict[str, Release]] = {}
        recall_ids = sorted({c.recall_id for c in campaigns if c.kind != "rollback"})
        if recall_ids:
            for recall_id, release in session.execute(
                select(RecallRelease.recall_id, Release)
                .join(Release, Release.id == RecallRelease.release_id)
                .where(RecallRelease.recall_id.in_(recall_ids))
            ).all():
                by_recall.setdefault(recall_id, {})[release.hardware_id] = release
        own = {
            r.id: r
            for r in session.scalars(select(Release).where(Release.id.in_(sorted({c.release_id for c in campaigns}))))
        }
        answer: dict[int, dict[str, Release]] = {}
        for campaign in campaigns:
            release = own[campaign.release_id]
            answer[campaign.id] = (
                by_recall.get(campaign.recall_id) or {release.hardware_id: release}
                if campaign.kind != "rollback"
                else {release.hardware_id: release}
            )
        return answer


def apply_manifests(
    session: Session,
    manifests: Sequence[tuple[VersionManifest, datetime]],
    now: datetime,
    seen: dict[str, datetime] | None = None,
) -> ManifestOutcome:
    """Apply verified manifests (each with the time it was received) in the caller's transaction.

    ``seen``: the cars' ``last_seen`` from the batch's other verified messages (ingest's); a car
    whose manifest is accepted takes it in the same row update and leaves ``seen``, so the
    caller's update of ``last_seen`` skips it (one row version of the car instead of two).
    """
    outcome = ManifestOutcome()
    if not manifests:
        return outcome
    vins = sorted({m.vin for m, _ in manifests})
    hardware_ids = {e.hardware_id for m, _ in manifests for e in m.ecus}
    view = _View(session, vins, hardware_ids)
    history: list[dict[str, object]] = []
    for manifest, received_at in sorted(manifests, key=lambda item: (item[0].vin, item[0].counter)):
        found = view.vehicles.get(manifest.vin)
        if found is None:  # verified against its key a moment ago: deleted since
            continue
        vehicle = found
        if vehicle.manifest_counter is not None and manifest.counter <= vehicle.manifest_counter:
            if manifest.counter == vehicle.manifest_counter and digest(manifest) == vehicle.manifest_digest:
                outcome.duplicates += 1
            else:
                outcome.replayed += 1
            continue
        outcome.accepted += 1
        vehicle.manifest_counter, vehicle.manifest_digest = manifest.counter, digest(manifest)
        latest = max(received_at, seen.pop(vehicle.vin, received_at)) if seen is not None else received_at
        if vehicle.last_seen is None or latest > vehicle.last_seen:
            vehicle.last_seen = latest
        registered = {ecu.serial: ecu for ecu in vehicle.ecus}
        for reported in manifest.ecus:
            history.append(_history_row(manifest, reported, received_at))
            ecu = registered.get(reported.ecu_serial)
            if ecu is None:
                detail = f"ECU {reported.ecu_serial} is not registered for this car"
                _find(session, view, outcome, manifest, reported, None, UNKNOWN_ECU, detail, now)
                continue
            was = (ecu.installed_sha256, ecu.installed_version) if ecu.reported_at is not None else None
            if ecu.installed_version != reported.version or was is None:
                outcome.versions_changed = True
            _record(ecu, reported, received_at)
            for kind, campaign_id, detail in _judge(view, vehicle.vin, ecu, reported, was):
                _find(session, view, outcome, manifest, reported, campaign_id, kind, detail, now)
        _remedies(session, view, outcome, vehicle, manifest, received_at)
    if history:
        insert_rows(session, EcuReport, history)  # COPY on PostgreSQL: a row per ECU and manifest
    return outcome


def _history_row(manifest: VersionManifest, reported: EcuManifest, received_at: datetime) -> dict[str, object]:
    return {
        "vin": manifest.vin,
        "ecu_serial": reported.ecu_serial,
        "hardware_id": reported.hardware_id,
        "version": reported.version,
        "release_counter": reported.release_counter,
        "image_sha256": reported.image_sha256,
        "image_length": reported.image_length,
        "target_path": reported.target_path,
        "manifest_counter": manifest.counter,
        "reason": manifest.reason.value,
        "sent_at": manifest.sent_at,
        "received_at": received_at,
    }


def _record(ecu: Ecu, reported: EcuManifest, received_at: datetime) -> None:
    if ecu.declared_version is None:  # registered before declared versions were kept apart
        ecu.declared_version = ecu.installed_version
    ecu.installed_version = reported.version
    ecu.installed_sha256 = reported.image_sha256
    ecu.installed_length = reported.image_length
    ecu.installed_target = reported.target_path
    ecu.installed_release_counter = reported.release_counter
    ecu.reported_hardware_id = reported.hardware_id
    ecu.reported_at = received_at


def _judge(
    view: _View, vin: str, ecu: Ecu, reported: EcuManifest, was: tuple[str | None, str] | None
) -> list[tuple[str, int | None, str]]:
    """The discrepancies one ECU's reported state shows: (kind, campaign, what).

    ``was`` is the ECU's last reported (image hash, version), None before its first manifest.
    """
    found: list[tuple[str, int | None, str]] = []
    if reported.hardware_id != ecu.hardware_id:
        found.append(
            (HARDWARE_MISMATCH, None, f"reports hardware {reported.hardware_id}, registered as {ecu.hardware_id}")
        )
    release = view.releases.get((ecu.hardware_id, reported.version))
    if release is None and reported.version != ecu.declared_version:
        found.append(
            (UNKNOWN_VERSION, None, f"{reported.version} is no release of {ecu.hardware_id} nor its declared version")
        )
    if (
        release is not None
        and release.image_sha256
        and reported.image_sha256
        and reported.image_sha256 != release.image_sha256
    ):
        found.append(
            (
                UNASSIGNED_IMAGE,
                None,
                f"runs image {reported.image_sha256[:12]}…, not the image of release {release.version} "
                f"({release.image_sha256[:12]}…)",
            )
        )
    if release is None or not release.image_sha256:  # no known image: the car's own last word is the baseline
        before, version = was if was is not None else (None, None)
        if before and reported.image_sha256 and reported.image_sha256 != before and version == reported.version:
            found.append(
                (
                    IMAGE_CHANGED,
                    None,
                    f"image changed from {before[:12]}… to {reported.image_sha256[:12]}… with no install "
                    f"(still version {reported.version})",
                )
            )
    done = [c for c in view.campaign_cars.get(vin, []) if VinState(c.cv.state) in _INSTALLED]
    if done:
        latest = max(done, key=lambda c: (c.cv.updated_at, c.cv.campaign_id))
        installs = latest.releases.get(ecu.hardware_id)
        if installs is not None and installs.version != reported.version:
            found.append(
                (
                    REMEDIED_MISMATCH,
                    latest.cv.campaign_id,
                    f"campaign {latest.cv.campaign_id} says {latest.cv.state} with {installs.version}; "
                    f"the car runs {reported.version}",
                )
            )
    return found


def _find(
    session: Session,
    view: _View,
    outcome: ManifestOutcome,
    manifest: VersionManifest,
    reported: EcuManifest,
    campaign_id: int | None,
    kind: str,
    detail: str,
    now: datetime,
) -> None:
    """Store a finding once (a repeat only moves its ``last_seen_at``) and audit the first."""
    key = (manifest.vin, reported.ecu_serial, kind, reported.version, reported.image_sha256)
    known = view.findings.get(key)
    if known is not None:
        known.last_seen_at = now
        return
    row = Discrepancy(
        vin=manifest.vin,
        ecu_serial=reported.ecu_serial,
        hardware_id=reported.hardware_id,
        kind=kind,
        version=reported.version,
        image_sha256=reported.image_sha256,
        campaign_id=campaign_id,
        detail=detail,
        manifest_counter=manifest.counter,
        found_at=now,
        last_seen_at=now,
    )
    session.add(row)
    view.findings[key] = row
    outcome.discrepancies[kind] += 1
    audit.append(
        session,
        audit.Action(
            actor=f"car {manifest.vin}",
            role="vehicle",
            method="MQTT",
            route=topics.status_topic(manifest.vin),
            target={"vin": manifest.vin, "ecu": reported.ecu_serial, "discrepancy": kind},
            status=200,
            detail=f"discrepancy {kind}: {detail}",
        ),
        now,
    )


def _remedies(
    session: Session,
    view: _View,
    outcome: ManifestOutcome,
    vehicle: Vehicle,
    manifest: VersionManifest,
    received_at: datetime,
) -> None:
    """A car not yet updated over the air whose every affected ECU now runs the fix: remedied by manifest."""
    running = {e.hardware_id: e for e in vehicle.ecus if e.reported_at is not None}
    for car in view.campaign_cars.get(vehicle.vin, []):
        cv = car.cv
        if car.kind == "rollback" or VinState(cv.state) not in _FLASHABLE:
            continue
        if not allowed(VinState(cv.state), VinState.REMEDIED_AT_DEALER, Cause.OPERATOR):
            continue
        affected = {hw: r for hw, r in car.releases.items() if any(e.hardware_id == hw for e in vehicle.ecus)}
        if not affected or not all(_runs(running.get(hw), release) for hw, release in affected.items()):
            continue
        if any(running[hw].installed_target in view.targets_of(release) for hw, release in affected.items()):
            continue  # installed over the air from the Director's target: the car's own report settles it
        transitions.remedied_by_manifest(
            session,
            cv,
            received_at,
            source=MANIFEST_SOURCE,
            reason=REPORTED_BY_MANIFEST,
            detail=f"version manifest {manifest.counter} shows the fix installed",
            evidence_ref=f"manifest {manifest.counter}",
        )
        outcome.moved.add(cv.campaign_id)


def _runs(ecu: Ecu | Reported | None, release: Release) -> bool:
    """Whether the car's word says ``ecu`` runs ``release`` (its image too, when both are known)."""
    if ecu is None or ecu.installed_version != release.version:
        return False
    return not (release.image_sha256 and ecu.installed_sha256 and ecu.installed_sha256 != release.image_sha256)


def already_remedied(session: Session, members: Sequence[Member]) -> set[str]:
    """The members whose manifests already show every assigned ECU on its release (nothing to install),
    as the population read them (:attr:`Member.reported`)."""
    release_ids = sorted({r for m in members for r in m.release_ids})
    if not release_ids:
        return set()
    releases = {r.id: r for r in session.scalars(select(Release).where(Release.id.in_(release_ids)))}
    return {
        m.vin
        for m in members
        if all(_runs(said, releases[rid]) for rid, said in zip(m.release_ids, m.reported, strict=True))
    }


def remedied_row(vin: str) -> dict[str, object]:
    """The columns of a launch's campaign row for a car counted remedied by its manifest."""
    return transitions.already_remedied_row(vin, ALREADY_REMEDIED)


LISTING = listing.by_id(
    "discrepancies", Discrepancy.id, default="-id", last_seen_at=listing.column(Discrepancy.last_seen_at, datetime)
)


def discrepancies(
    session: Session,
    *,
    vin: str | None = None,
    kind: str | None = None,
    campaign_id: int | None = None,
    since: datetime | None = None,
    sort: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> Page[DiscrepancyPublic]:
    """Findings, newest first by default, with filters."""
    query = select(Discrepancy)
    if vin is not None:
        query = query.where(Discrepancy.vin == vin)
    if kind is not None:
        query = query.where(Discrepancy.kind == kind)
    if campaign_id is not None:
        query = query.where(Discrepancy.campaign_id == campaign_id)
    if since is not None:
        query = query.where(Discrepancy.last_seen_at >= since)
    rows, next_cursor = listing.page(session, query, LISTING, sort, cursor, limit)
    return Page[DiscrepancyPublic](items=[DiscrepancyPublic.model_validate(r) for r in rows], next_cursor=next_cursor)


def history(session: Session, vin: str, limit: int = 200) -> list[EcuReport]:
    """The car's accepted manifests, per ECU, newest first (for its timeline)."""
    return list(
        session.scalars(select(EcuReport).where(EcuReport.vin == vin).order_by(EcuReport.id.desc()).limit(limit))
    )
