"""Release upload: stage the bundle, prove it is what the form says, then sign it into the Image repository.

Nothing is kept unless every check passes: the staged file is removed and the
transaction rolled back on any error.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import IO

from sqlalchemy import Select, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firmware_bundles.bundle import CHUNK, Manifest, open_bundle
from firmware_bundles.errors import InvalidBundle
from firmware_bundles.uptane import bundle_target_path
from ota_server.db.models import Campaign, CampaignEcu, Recall, RecallRelease, Release
from ota_server.domain.states import CampaignStatus
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.infra.bundle_store import BundleStore, StagedBundle
from ota_server.schemas import ReleasePublic
from ota_server.schemas.listing import Page
from ota_server.services import deltas, listing
from ota_server.services.campaign_view import schedule, shown_plan
from ota_server.services.deltas import DeltaPolicy
from ota_server.signing.image_repo import ImageRepository


def _verified_manifest(path: Path) -> Manifest:
    """Read the whole bundle: the manifest, then the image against the manifest's own hash."""
    try:
        with path.open("rb") as fh, open_bundle(fh) as (manifest, image):
            digest = hashlib.sha256()
            while chunk := image.read(CHUNK):
                digest.update(chunk)
    except InvalidBundle as exc:
        raise InvalidInput(f"not a valid bundle: {exc}") from exc
    if digest.hexdigest() != manifest.image_sha256:
        raise InvalidInput("not a valid bundle: the image does not match the manifest's sha256")
    return manifest


def _check_matches(manifest: Manifest, hardware_id: str, version: str, release_counter: int) -> None:
    given = {"hardware_id": hardware_id, "version": version, "release_counter": release_counter}
    for field, value in given.items():
        found = getattr(manifest, field)
        if found != value:
            raise InvalidInput(f"bundle manifest says {field}={found!r} but the form says {value!r}")


def _check_fields(hardware_id: str, version: str, release_counter: int) -> None:
    if not hardware_id.strip() or not version.strip():
        raise InvalidInput("hardware_id and version are required")
    if release_counter < 0:
        raise InvalidInput("release_counter must be >= 0")
    if "/" in hardware_id or "/" in version or ".." in version:
        raise InvalidInput("hardware_id and version may not contain '/' or '..'")


def _exists(session: Session, hardware_id: str, version: str) -> bool:
    query = select(Release.id).where(Release.hardware_id == hardware_id, Release.version == version)
    return session.scalar(query) is not None


def upload(
    session: Session,
    store: BundleStore,
    image_repo: ImageRepository,
    source: IO[bytes],
    *,
    hardware_id: str,
    version: str,
    release_counter: int,
    now: datetime,
    delta_policy: DeltaPolicy | None = None,
    rxswin: str | None = None,
) -> ReleasePublic:
    """Stage, check and sign a release, with deltas from older releases when they pay off.

    ``rxswin``: the RXSWIN the release brings, for the R156 per-update record.
    """
    _check_fields(hardware_id, version, release_counter)
    if _exists(session, hardware_id, version):
        raise Conflict(f"release {hardware_id} {version} already exists")
    staged: StagedBundle = store.stage(source)
    built: list[deltas.BuiltDelta] = []
    try:
        manifest = _verified_manifest(staged.path)
        _check_matches(manifest, hardware_id, version, release_counter)
        # diffing is slow for big images: done before taking the signing lock
        built = deltas.build(session, store, staged.path, manifest, staged.length, delta_policy or DeltaPolicy())
        with image_repo.lock:
            release = Release(
                hardware_id=hardware_id,
                version=version,
                release_counter=release_counter,
                target_path=bundle_target_path(hardware_id, version),
                length=staged.length,
                sha256=staged.sha256,
                created_at=now,
                image_sha256=manifest.image_sha256,
                image_size=manifest.image_size,
                rxswin=rxswin,
                published=False,  # publish() signs it in, or it waits for the offline targets key
            )
            session.add(release)
            session.flush()
            deltas.record(session, store, release, built, now)
            image_repo.publish(session, now)
            store.keep(staged)
            session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"release {hardware_id} {version} already exists (concurrent upload)") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        store.discard(staged)  # no-op once kept
        deltas.discard(built)
    return ReleasePublic.model_validate(release)


LISTING = listing.by_id(
    "releases",
    Release.id,
    created_at=listing.column(Release.created_at, datetime),
    hardware_id=listing.column(Release.hardware_id, str),
    version=listing.column(Release.version, str),
)


def _filtered(hardware_id: str | None, retired: bool | None) -> Select[Release]:
    query = select(Release)
    if hardware_id is not None:
        query = query.where(Release.hardware_id == hardware_id)
    if retired is not None:
        query = query.where(Release.retired_at.is_not(None) if retired else Release.retired_at.is_(None))
    return query


def page(
    session: Session, hardware_id: str | None, retired: bool | None, sort: str | None, cursor: str | None, limit: int
) -> Page[ReleasePublic]:
    rows, next_cursor = listing.page(session, _filtered(hardware_id, retired), LISTING, sort, cursor, limit)
    return Page[ReleasePublic](items=[ReleasePublic.model_validate(r) for r in rows], next_cursor=next_cursor)


_UNFINISHED = (CampaignStatus.ACTIVE.value, CampaignStatus.PAUSED.value)


def _campaign_said(session: Session, campaign: Campaign, now: datetime) -> str:
    """``campaign 3 (active)``; one waiting for its planned start says so (never "active")."""
    recall = session.get(Recall, campaign.recall_id)
    assert recall is not None  # foreign key
    starts_at, scheduled = schedule(shown_plan(recall, campaign), campaign.status, now)
    if not scheduled or starts_at is None:
        return f"campaign {campaign.id} ({campaign.status})"
    starts = f"starts at {starts_at.strftime('%Y-%m-%d %H:%M UTC')}"
    status = "scheduled" if campaign.status == CampaignStatus.ACTIVE.value else campaign.status
    return f"campaign {campaign.id} ({status}: {starts})"


def users(session: Session, release_id: int, now: datetime) -> list[str]:
    """What still needs the release: recalls not launched yet (as remedy or rollback release) and
    campaigns not finished (active or paused) that install it or whose recall rolls back to it."""
    named = or_(
        Recall.release_id == release_id,
        Recall.id.in_(select(RecallRelease.recall_id).where(RecallRelease.release_id == release_id)),
    )
    launched = select(Campaign.recall_id)
    found = [
        f"recall {r.campaign_number} (not launched)"
        for r in session.scalars(select(Recall).where(named, Recall.id.not_in(launched)).order_by(Recall.id))
    ]
    installing = or_(
        Campaign.release_id == release_id,
        Campaign.id.in_(select(CampaignEcu.campaign_id).where(CampaignEcu.release_id == release_id)),
    )
    unfinished = select(Campaign).where(Campaign.status.in_(_UNFINISHED))
    found += [
        _campaign_said(session, c, now) for c in session.scalars(unfinished.where(installing).order_by(Campaign.id))
    ]
    # A rollback release is named inside the recall's rollout plan (JSON): few recalls, read in Python.
    open_recalls = select(Recall).where(
        Recall.rollout.is_not(None),
        or_(Recall.id.not_in(launched), Recall.id.in_(unfinished.with_only_columns(Campaign.recall_id))),
    )
    found += [
        f"recall {r.campaign_number} (its rollback release)"
        for r in session.scalars(open_recalls.order_by(Recall.id))
        if (r.rollout or {}).get("rollback_release_id") == release_id
    ]
    return found


def retire(session: Session, release_id: int, reason: str, actor: str, now: datetime) -> ReleasePublic:
    """Retire a release no recall or unfinished campaign needs; Conflict naming what still uses it."""
    release = session.get(Release, release_id)
    if release is None:
        raise NotFound(f"no release {release_id}")
    if release.retired_at is not None:
        raise Conflict(
            f"release {release_id} was retired on {release.retired_at.date().isoformat()} by {release.retired_by}"
        )
    if using := users(session, release_id, now):
        raise Conflict(
            f"release {release_id} ({release.hardware_id} {release.version}) is still used by {', '.join(using)}"
        )
    release.retired_at, release.retired_by, release.retire_reason = now, actor, reason
    answer = ReleasePublic.model_validate(release)
    session.commit()
    return answer


def bundle_path(session: Session, store: BundleStore, target_path: str) -> Path:
    release = session.scalar(select(Release).where(Release.target_path == target_path))
    if release is None:
        return deltas.delta_path(session, store, target_path)
    if not release.published:
        raise NotFound(f"{target_path!r} is not published (it waits for its targets signature)")
    path = store.path_for(release.sha256)
    if not path.exists():
        raise NotFound(f"bundle file for {target_path!r} is missing on this server")
    return path
