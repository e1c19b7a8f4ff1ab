"""The Image repository: one TUF targets listing every published bundle and the deltas between them.

With the targets key on the server (development keys) every release upload re-signs
targets, snapshot and timestamp at once. With the targets key offline (``ota keys
init``) an upload only prepares the next targets metadata, unsigned ("pending");
the release is published when ``ota releases sign`` posts a threshold of valid
targets signatures over exactly those bytes, and only then are snapshot and
timestamp signed with the online keys.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, Signature, TargetFile, Targets

from firmware_bundles.uptane import (
    Expiry,
    RepoVersions,
    RoleSigners,
    delta_target,
    due,
    image_target,
    publish_targets,
    refresh_chain,
    serialize,
    sign_snapshot_and_timestamp,
    unsigned_targets,
)
from ota_server.db.models import Delta, Release
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.signing.keys import RepoKeys
from ota_server.signing.store import CHAIN, IMAGE, REPO_WIDE, chain_versions, get_file, put_chain, put_file

log = logging.getLogger(__name__)

PENDING_TARGETS = "targets.pending.json"


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


@dataclass(frozen=True)
class Published:
    """What a targets signature published."""

    targets_version: int
    release_ids: list[int]


def _all_targets(session: Session) -> dict[str, TargetFile]:
    """Every release and delta, published or waiting (the next targets metadata lists them all)."""
    targets = {r.target_path: target_for(r) for r in session.scalars(select(Release).order_by(Release.id))}
    for delta in session.scalars(select(Delta).order_by(Delta.id)):
        targets[delta.target_path] = delta_target_for(delta)
    return targets


def _describe(result_threshold: int, trusted: set[str], valid: set[str], given: Mapping[str, Signature]) -> str:
    untrusted = sorted(set(given) - trusted)
    invalid = sorted((set(given) & trusted) - valid)
    parts = [f"targets needs {result_threshold} valid signature(s) by its trusted key(s), got {len(valid)}"]
    if untrusted:
        parts.append(f"key(s) not trusted for targets by the current root: {', '.join(untrusted)}")
    if invalid:
        parts.append(f"signature(s) that do not verify over the pending payload: {', '.join(invalid)}")
    return "; ".join(parts) + "; nothing was published"


class ImageRepository:
    """Signs the Image repository's chain; the root is made by :func:`signing.roots.ensure_root`.

    ``lock`` must be held from :meth:`publish` until the caller commits: two
    uploads signing the same next version would otherwise drop one release.
    Across replicas the row lock taken on the chain does the same job.
    """

    def __init__(self, keys: RepoKeys, expiry: Expiry | None = None) -> None:
        self.keys = keys
        self.expiry = expiry or Expiry()
        self.lock = threading.Lock()

    def signers(self, session: Session) -> RoleSigners:
        return self.keys.signers(session)

    def targets_offline(self, session: Session) -> bool:
        """True when the server holds no threshold of targets keys (``ota keys init`` was used)."""
        return not self.signers(session).targets

    def publish(self, session: Session, now: datetime) -> RepoVersions | None:
        """Sign a new chain listing every release, or, with the targets key offline, prepare it.

        Returns the new versions, or None when the release waits for ``ota releases sign``.
        """
        signers = self.signers(session)
        if not signers.targets:
            self.prepare_pending(session, now)
            return None
        previous = chain_versions(session, IMAGE, REPO_WIDE, for_update=True)
        versions, files = publish_targets(_all_targets(session), signers, self.expiry, now, previous)
        put_chain(session, IMAGE, REPO_WIDE, versions, files, now)
        for release in session.scalars(select(Release).where(Release.published.is_(False))):
            release.published = True
        return versions

    def prepare_pending(self, session: Session, now: datetime) -> bytes:
        """Store the next targets metadata, unsigned; it is never served to cars."""
        previous = chain_versions(session, IMAGE, REPO_WIDE, for_update=True)
        md = unsigned_targets(_all_targets(session), previous.targets + 1, now + self.expiry.targets)
        data = serialize(md)
        put_file(session, IMAGE, REPO_WIDE, PENDING_TARGETS, previous.targets + 1, data, now)
        return data

    def pending(self, session: Session) -> bytes:
        row = get_file(session, IMAGE, REPO_WIDE, PENDING_TARGETS)
        if row is None:
            raise NotFound("no targets metadata is waiting for a signature")
        return row.data

    def accept_signatures(
        self, session: Session, payload_sha256: str, signatures: Mapping[str, str], now: datetime
    ) -> Published:
        """Check the offline targets signatures (key id to hex signature) and publish.

        Raises NotFound (nothing pending), Conflict (the payload changed since it was
        fetched) or InvalidInput (below threshold); nothing is written in those cases.
        """
        previous = chain_versions(session, IMAGE, REPO_WIDE, for_update=True)  # before reading: one signer wins
        data = self.pending(session)
        actual = hashlib.sha256(data).hexdigest()
        if payload_sha256.lower() != actual:
            raise Conflict(
                f"the pending targets metadata changed since it was fetched (sha256 is now {actual}); "
                "fetch it and sign again"
            )
        md = Metadata[Targets].from_bytes(data)
        if md.signed.version != previous.targets + 1:
            raise Conflict(f"the pending targets v{md.signed.version} is stale (published is v{previous.targets})")
        given = {keyid: Signature(keyid, sig) for keyid, sig in signatures.items()}
        root = self.keys.root(session).signed
        result = root.get_verification_result("targets", md.signed_bytes, given)
        if not result.verified:
            valid = set(result.signed)
            raise InvalidInput(_describe(result.threshold, set(root.roles["targets"].keyids), valid, given))
        md.signatures.clear()
        md.signatures.update({keyid: given[keyid] for keyid in result.signed})
        versions, files = sign_snapshot_and_timestamp(
            md.signed.version, self.signers(session), self.expiry, now, previous
        )
        put_chain(session, IMAGE, REPO_WIDE, versions, {"targets.json": serialize(md), **files}, now)
        pending_row = get_file(session, IMAGE, REPO_WIDE, PENDING_TARGETS)
        assert pending_row is not None  # read above, in this transaction
        session.delete(pending_row)
        paths = set(md.signed.targets)
        released = session.scalars(select(Release).where(Release.published.is_(False))).all()
        published = [r for r in released if r.target_path in paths]
        for release in published:
            release.published = True
        return Published(md.signed.version, [r.id for r in published])

    def refresh(self, session: Session, now: datetime, *, force: Collection[str] = ()) -> list[str]:
        """Re-sign whatever of the chain is within half its lifetime of expiring (or in ``force``).

        The caller commits.

        Offline targets close to expiry cannot be re-signed here: the same targets is
        prepared as pending (if nothing is) and a warning asks for ``ota releases sign``.
        """
        chain_versions(session, IMAGE, REPO_WIDE, for_update=True)  # lock the rows
        rows = {name: get_file(session, IMAGE, REPO_WIDE, name) for name in CHAIN}
        files = {name: row.data for name, row in rows.items() if row is not None}
        if len(files) != len(CHAIN):
            return []
        signers = self.signers(session)
        changed = refresh_chain(files, signers, self.expiry, now, force=force)
        for name, (version, data) in changed.items():
            put_file(session, IMAGE, REPO_WIDE, name, version, data, now)
        if not signers.targets:
            self._warn_targets_expiry(session, files["targets.json"], now)
        return sorted(changed)

    def _warn_targets_expiry(self, session: Session, targets: bytes, now: datetime) -> None:
        expires = Metadata[Targets].from_bytes(targets).signed.expires
        if not due(expires, self.expiry.targets, now):
            return
        if get_file(session, IMAGE, REPO_WIDE, PENDING_TARGETS) is None:
            self.prepare_pending(session, now)
        log.warning("the Image targets metadata expires at %s: run `ota releases sign` with the offline key", expires)
