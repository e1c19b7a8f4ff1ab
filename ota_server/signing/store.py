"""Signed metadata kept in the database, so every replica and restart serves the same bytes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware_bundles.uptane import RepoVersions
from ota_server.db.models import RepoFile

IMAGE = "image"
DIRECTOR = "director"
REPO_WIDE = ""
CHAIN = ("targets.json", "snapshot.json", "timestamp.json")


def get_file(session: Session, repo: str, owner: str, name: str) -> RepoFile | None:
    return session.get(RepoFile, (repo, owner, name))


def put_file(session: Session, repo: str, owner: str, name: str, version: int, data: bytes, now: datetime) -> None:
    row = session.get(RepoFile, (repo, owner, name))
    if row is None:
        session.add(RepoFile(repo=repo, owner=owner, name=name, version=version, data=data, updated_at=now))
        return
    row.version, row.data, row.updated_at = version, data, now


def put_chain(
    session: Session, repo: str, owner: str, versions: RepoVersions, files: dict[str, bytes], now: datetime
) -> None:
    by_name = {
        "targets.json": versions.targets,
        "snapshot.json": versions.snapshot,
        "timestamp.json": versions.timestamp,
    }
    for name in CHAIN:
        put_file(session, repo, owner, name, by_name[name], files[name], now)


def chain_versions(session: Session, repo: str, owner: str, *, for_update: bool = False) -> RepoVersions:
    """Current targets/snapshot/timestamp versions (0 when never signed).

    ``for_update`` locks the rows on PostgreSQL so two writers cannot both sign
    the same next version.
    """
    query = select(RepoFile.name, RepoFile.version).where(
        RepoFile.repo == repo, RepoFile.owner == owner, RepoFile.name.in_(CHAIN)
    )
    if for_update:
        query = query.with_for_update()
    found = {name: version for name, version in session.execute(query)}
    return RepoVersions(found.get("targets.json", 0), found.get("snapshot.json", 0), found.get("timestamp.json", 0))


def latest_root(session: Session, repo: str) -> RepoFile | None:
    rows = session.scalars(
        select(RepoFile).where(RepoFile.repo == repo, RepoFile.owner == REPO_WIDE, RepoFile.name.like("%.root.json"))
    ).all()
    return max(rows, key=lambda row: row.version, default=None)
