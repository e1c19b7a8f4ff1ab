"""The Director: per-vehicle targets metadata naming exactly what each ECU must install.

One Director root (an offline root key, one online key) is shared by all cars;
each VIN has its own targets/snapshot/timestamp chain whose versions only grow,
so a car's rollback protection holds across campaigns.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session
from tuf.api.metadata import TargetFile

from firmware_bundles.uptane import Expiry, RepoVersions, RoleSigners, director_target, publish_targets
from ota_server.db.models import RepoFile
from ota_server.signing.store import CHAIN, DIRECTOR

_CHUNK = 500


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class Director:
    def __init__(self, signers: RoleSigners, expiry: Expiry | None = None) -> None:
        self._signers = signers
        self._expiry = expiry or Expiry()

    @property
    def signers(self) -> RoleSigners:
        return self._signers

    def _sign(
        self, vin: str, images: Mapping[str, TargetFile], previous: RepoVersions, now: datetime
    ) -> list[dict[str, Any]]:
        # TUF keys targets by path, so one chain names a bundle once: with two ECUs of
        # the same hardware the first serial given gets it.
        targets: dict[str, TargetFile] = {}
        for serial, image in images.items():
            targets.setdefault(image.path, director_target(image, vin, serial))
        versions, files = publish_targets(targets, self._signers, self._expiry, now, previous, extra={"vin": vin})
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

    def assign(self, session: Session, plan: Mapping[str, Mapping[str, TargetFile]], now: datetime) -> None:
        """Sign each VIN's next chain; ``plan`` maps VIN to ``{ecu_serial: image target}``.

        Rows are written in bulk; the caller commits them with the campaign.
        """
        previous = self._previous(session, list(plan))
        new_rows: list[dict[str, Any]] = []
        changed_rows: list[dict[str, Any]] = []
        for vin, images in plan.items():
            old = previous.get(vin, {})
            versions = RepoVersions(
                old.get("targets.json", 0), old.get("snapshot.json", 0), old.get("timestamp.json", 0)
            )
            (changed_rows if old else new_rows).extend(self._sign(vin, images, versions, now))
        if new_rows:
            session.execute(insert(RepoFile), new_rows)
        if changed_rows:
            session.execute(update(RepoFile), changed_rows)
