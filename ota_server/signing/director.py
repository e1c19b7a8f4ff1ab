"""The Director: per-vehicle targets metadata naming exactly what each ECU must install.

One Director root (a root key, one online key) is shared by all cars; each VIN has
its own targets/snapshot/timestamp chain whose versions only grow, so a car's
rollback protection holds across campaigns.

A VIN's chain is re-signed lazily, when its timestamp is served and is within half
its lifetime of expiring (:meth:`Director.refresh`): a chain is read only by a car
working on a campaign, usually soon after the launch signed it, so a periodic job
would re-sign tens of thousands of idle chains for nobody.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, Snapshot, TargetFile, Timestamp

from firmware_bundles.uptane import (
    Expiry,
    RepoVersions,
    RoleSigners,
    director_target,
    due,
    publish_targets,
    refresh_chain,
)
from ota_server.db.models import RepoFile
from ota_server.signing.keys import RepoKeys
from ota_server.signing.store import CHAIN, DIRECTOR, get_file, put_file

_CHUNK = 500
DIRECTOR_ONLINE_ROLES = ("targets", "snapshot", "timestamp")


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class Director:
    def __init__(self, keys: RepoKeys, expiry: Expiry | None = None) -> None:
        self.keys = keys
        self.expiry = expiry or Expiry()

    def signers(self, session: Session) -> RoleSigners:
        return self.keys.signers(session)

    def _sign(
        self,
        signers: RoleSigners,
        vin: str,
        images: Mapping[str, TargetFile],
        previous: RepoVersions,
        now: datetime,
        min_release_counter: int | None,
    ) -> list[dict[str, Any]]:
        # TUF keys targets by path, so one chain names a bundle once: with two ECUs of
        # the same hardware the first serial given gets it.
        targets: dict[str, TargetFile] = {}
        for serial, image in images.items():
            targets.setdefault(image.path, director_target(image, vin, serial, min_release_counter=min_release_counter))
        versions, files = publish_targets(targets, signers, self.expiry, now, previous, extra={"vin": vin})
        by_name = {
            "targets.json": versions.targets,
            "snapshot.json": versions.snapshot,
            "timestamp.json": versions.timestamp,
        }
        return [
            {
                "repo": DIRECTOR,
                "owner": vin,
                "name": name,
                "version": by_name[name],
                "data": files[name],
                "updated_at": now,
            }
            for name in CHAIN
        ]

    def _previous(self, session: Session, vins: Sequence[str]) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for chunk in _chunks(vins):
            rows = session.execute(
                select(RepoFile.owner, RepoFile.name, RepoFile.version)
                .where(RepoFile.repo == DIRECTOR, RepoFile.owner.in_(chunk))
                .with_for_update()
            )
            for owner, name, version in rows:
                found.setdefault(owner, {})[name] = version
        return found

    def assign(
        self,
        session: Session,
        plan: Mapping[str, Mapping[str, TargetFile]],
        now: datetime,
        *,
        min_release_counter: int | None = None,
    ) -> None:
        """Sign each VIN's next chain; ``plan`` maps VIN to ``{ecu_serial: image target}``.

        ``min_release_counter`` (the recall's floor) goes into every assignment.
        Rows are written in bulk; the caller commits them with the campaign.
        """
        signers = self.signers(session)
        previous = self._previous(session, list(plan))
        new_rows: list[dict[str, Any]] = []
        changed_rows: list[dict[str, Any]] = []
        for vin, images in plan.items():
            old = previous.get(vin, {})
            versions = RepoVersions(
                old.get("targets.json", 0), old.get("snapshot.json", 0), old.get("timestamp.json", 0)
            )
            (changed_rows if old else new_rows).extend(
                self._sign(signers, vin, images, versions, now, min_release_counter)
            )
        if new_rows:
            session.execute(insert(RepoFile), new_rows)
        if changed_rows:
            session.execute(update(RepoFile), changed_rows)

    def stale(self, session: Session, vin: str, now: datetime) -> bool:
        """Cheap, lock-free check: is this VIN's snapshot or timestamp due for re-signing?"""
        ts = get_file(session, DIRECTOR, vin, "timestamp.json")
        snap = get_file(session, DIRECTOR, vin, "snapshot.json")
        if ts is None or snap is None:
            return False
        return due(Metadata[Timestamp].from_bytes(ts.data).signed.expires, self.expiry.timestamp, now) or due(
            Metadata[Snapshot].from_bytes(snap.data).signed.expires, self.expiry.snapshot, now
        )

    def refresh(self, session: Session, vin: str, now: datetime, *, force: Collection[str] = ()) -> list[str]:
        """Re-sign what of ``vin``'s chain is due (or forced), under the rows' lock; the caller commits."""
        rows = session.scalars(
            select(RepoFile).where(RepoFile.repo == DIRECTOR, RepoFile.owner == vin).with_for_update()
        ).all()
        files = {row.name: row.data for row in rows if row.name in CHAIN}
        if len(files) != len(CHAIN):
            return []
        changed = refresh_chain(files, self.signers(session), self.expiry, now, force=force)
        for name, (version, data) in changed.items():
            put_file(session, DIRECTOR, vin, name, version, data, now)
        return sorted(changed)

    def vins(self, session: Session) -> list[str]:
        """Every VIN with a chain."""
        query = select(RepoFile.owner).where(RepoFile.repo == DIRECTOR, RepoFile.name == "timestamp.json")
        return list(session.scalars(query))
