"""Binary deltas between releases, built when a release is uploaded.

For each older release of the same hardware (lower release counter) whose bundle
this server holds, bsdiff4 turns the older IMAGE into the new one. A delta is kept
only when it saves enough bytes against the full bundle; it is stored next to the
bundles and listed in the Image repository as its own target (see
``firmware_bundles.uptane.delta_target``), so cars verify it like any target. The
full bundle stays listed: a car whose running image matches no delta base, or whose
delta fails, downloads it. Both images are held in memory while diffing, hence the
image size cap; bases are limited to the most recent few releases.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import bsdiff4
from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware_bundles.bundle import Manifest, open_bundle
from firmware_bundles.uptane import delta_target_path
from ota_server.db.models import Delta, Release
from ota_server.errors import NotFound
from ota_server.infra.bundle_store import BundleStore, StagedBundle


@dataclass(frozen=True)
class DeltaPolicy:
    """When a delta is worth building and keeping."""

    max_ratio: float = 0.5  # keep a delta only if it is below this fraction of the full bundle
    max_image_bytes: int = 64 * 1024 * 1024
    max_bases: int = 5


@dataclass(frozen=True)
class BuiltDelta:
    """A delta staged in the store, not yet recorded."""

    base_image_sha256: str
    staged: StagedBundle


def read_image(bundle: Path) -> bytes:
    with bundle.open("rb") as fh, open_bundle(fh) as (_manifest, image):
        return image.read()


def _bases(session: Session, manifest: Manifest, policy: DeltaPolicy) -> list[Release]:
    query = (
        select(Release)
        .where(
            Release.hardware_id == manifest.hardware_id,
            Release.release_counter < manifest.release_counter,
            Release.image_sha256.is_not(None),
            Release.image_size <= policy.max_image_bytes,
        )
        .order_by(Release.release_counter.desc(), Release.id.desc())
        .limit(policy.max_bases)
    )
    return list(session.scalars(query))


def build(
    session: Session, store: BundleStore, bundle: Path, manifest: Manifest, bundle_length: int, policy: DeltaPolicy
) -> list[BuiltDelta]:
    """Stage the deltas worth keeping from older releases to the bundle at ``bundle``."""
    if manifest.image_size > policy.max_image_bytes:
        return []
    bases = [b for b in _bases(session, manifest, policy) if b.image_sha256 != manifest.image_sha256]
    if not bases:
        return []
    new_image = read_image(bundle)
    built: list[BuiltDelta] = []
    seen: set[str] = set()
    try:
        for base in bases:
            path = store.path_for(base.sha256)
            if base.image_sha256 is None or base.image_sha256 in seen or not path.exists():
                continue
            seen.add(base.image_sha256)
            patch: bytes = bsdiff4.diff(read_image(path), new_image)
            if len(patch) < policy.max_ratio * bundle_length:
                built.append(BuiltDelta(base.image_sha256, store.stage(io.BytesIO(patch))))
    except BaseException:
        discard(built)
        raise
    return built


def record(session: Session, store: BundleStore, release: Release, built: list[BuiltDelta], now: datetime) -> None:
    """Add the delta rows for ``release`` and move their files into place (the caller commits)."""
    for delta in built:
        path = delta_target_path(release.hardware_id, delta.base_image_sha256, release.version)
        session.add(
            Delta(
                release_id=release.id,
                base_image_sha256=delta.base_image_sha256,
                target_path=path,
                length=delta.staged.length,
                sha256=delta.staged.sha256,
                created_at=now,
            )
        )
    session.flush()
    for delta in built:
        store.keep(delta.staged, delta=True)


def discard(built: list[BuiltDelta]) -> None:
    for delta in built:
        BundleStore.discard(delta.staged)


def delta_path(session: Session, store: BundleStore, target_path: str) -> Path:
    """The stored file of the delta target ``target_path``."""
    delta = session.scalar(select(Delta).where(Delta.target_path == target_path))
    if delta is None or not delta.release.published:
        raise NotFound(f"no target {target_path!r}")
    path = store.delta_path_for(delta.sha256)
    if not path.exists():
        raise NotFound(f"delta file for {target_path!r} is missing on this server")
    return path
