"""Reading the signed repositories back for the HTTP routes (what the agents fetch)."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ota_server.db.models import RepoFile
from ota_server.errors import NotFound
from ota_server.signing.director import Director
from ota_server.signing.store import CHAIN, DIRECTOR, IMAGE, REPO_WIDE, get_file, latest_root

_VERSIONED_ROOT = re.compile(r"^[1-9][0-9]{0,8}\.root\.json$")


def _root(session: Session, repo: str, name: str) -> bytes:
    row = latest_root(session, repo) if name == "root.json" else get_file(session, repo, REPO_WIDE, name)
    if row is None:
        raise NotFound(f"no {repo} metadata {name!r}")
    return row.data


def image_metadata(session: Session, name: str) -> bytes:
    if name == "root.json" or _VERSIONED_ROOT.match(name):
        return _root(session, IMAGE, name)
    row = get_file(session, IMAGE, REPO_WIDE, name) if name in CHAIN else None
    if row is None:
        raise NotFound(f"no image metadata {name!r}")
    return row.data


def refresh_director(session: Session, director: Director, vin: str, now: datetime) -> None:
    """Re-sign this VIN's chain if its timestamp or snapshot is close to expiry (lazily, as it is served)."""
    vin = vin.upper()
    if director.stale(session, vin, now):
        director.refresh(session, vin, now)
        session.commit()


def director_metadata(session: Session, vin: str, name: str) -> bytes:
    """The Director's root (shared) or this VIN's own chain; 404 until the VIN has been assigned anything."""
    vin = vin.upper()
    has_chain = session.scalar(select(RepoFile.name).where(RepoFile.repo == DIRECTOR, RepoFile.owner == vin).limit(1))
    if has_chain is None or not vin:
        raise NotFound(f"no Director metadata for VIN {vin!r}")
    if name == "root.json" or _VERSIONED_ROOT.match(name):
        return _root(session, DIRECTOR, name)
    row = get_file(session, DIRECTOR, vin, name) if name in CHAIN else None
    if row is None:
        raise NotFound(f"no Director metadata {name!r} for VIN {vin}")
    return row.data
