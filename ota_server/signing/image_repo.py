"""The Image repository: one TUF targets listing every released bundle and the deltas between them.

Every release upload re-signs targets, snapshot and timestamp with the whole
release list, so the repository is always a pure function of the releases table.
"""

from __future__ import annotations

import threading
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from tuf.api.metadata import TargetFile

from firmware_bundles.uptane import Expiry, RepoVersions, RoleSigners, delta_target, image_target, publish_targets
from ota_server.db.models import Delta, Release
from ota_server.signing.store import IMAGE, REPO_WIDE, chain_versions, put_chain


def target_for(release: Release) -> TargetFile:
    return image_target(
        release.target_path,
        release.length,
        release.sha256,
        release.hardware_id,
        release.version,
        release.release_counter,
        image_sha256=release.image_sha256,
        image_size=release.image_size,
    )


def delta_target_for(delta: Delta) -> TargetFile:
    release = delta.release
    assert release.image_sha256 is not None and release.image_size is not None  # a delta needs both
    return delta_target(
        delta.target_path,
        delta.length,
        delta.sha256,
        delta_for=release.target_path,
        base_image_sha256=delta.base_image_sha256,
        image_sha256=release.image_sha256,
        image_size=release.image_size,
    )


class ImageRepository:
    """Signs the Image repository's targets chain; the root is made by :func:`signing.roots.ensure_root`.

    ``lock`` must be held from :meth:`publish` until the caller commits: two
    uploads signing the same next version would otherwise drop one release.
    Across replicas the row lock taken in :meth:`publish` does the same job.
    """

    def __init__(self, signers: RoleSigners, expiry: Expiry | None = None) -> None:
        self._signers = signers
        self._expiry = expiry or Expiry()
        self.lock = threading.Lock()

    @property
    def signers(self) -> RoleSigners:
        return self._signers

    def publish(self, session: Session, now: datetime) -> RepoVersions:
        """Sign a new chain listing every release in the session's view (including unflushed-then-flushed ones)."""
        previous = chain_versions(session, IMAGE, REPO_WIDE, for_update=True)
        releases = session.scalars(select(Release).order_by(Release.id)).all()
        targets = {release.target_path: target_for(release) for release in releases}
        for delta in session.scalars(select(Delta).order_by(Delta.id)):
            targets[delta.target_path] = delta_target_for(delta)
        versions, files = publish_targets(targets, self._signers, self._expiry, now, previous)
        put_chain(session, IMAGE, REPO_WIDE, versions, files, now)
        return versions
