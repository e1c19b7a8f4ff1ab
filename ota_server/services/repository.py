"""Reading the signed repositories back for what the agents fetch, cheaply.

Every car of a campaign fetches the same Image repository metadata, its own Director
chain and a bundle, so this is the server's hottest read path (see
``ota_server/repo_http.py``, which serves it outside the API's middleware stack):

- the Image repository and the Director root are read as one consistent set of rows and
  kept in memory for ``ttl_s`` (and dropped at once when this process commits a change
  to them), so other replicas' and the CLI's changes show within ``ttl_s``;
- a Director chain file is one indexed query (they change per car, per campaign);
- a bundle's file is found once per target path (published targets never change).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from firmware_bundles.uptane import due
from ota_server.bundle_store import BundleStore
from ota_server.db.models import RepoFile
from ota_server.errors import NotFound
from ota_server.services import releases
from ota_server.signing.director import PENDING, Director
from ota_server.signing.store import CHAIN, DIRECTOR, IMAGE, REPO_WIDE

VERSIONED_ROOT = re.compile(r"^([1-9][0-9]{0,8})\.root\.json$")
_KNOWN_CHAINS_MAX = 500_000
_TARGET_PATHS_MAX = 10_000


@dataclass(frozen=True)
class _Copy:
    """One repository's repo-wide files, read together, and when."""

    files: dict[str, bytes]
    latest_root: bytes | None
    loaded_at: float


def _expires(data: bytes) -> datetime:
    """The ``expires`` of signed metadata (read with the C JSON parser; no object model needed)."""
    text = str(json.loads(data)["signed"]["expires"])
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class RepoReader:
    def __init__(
        self,
        engine: Engine,
        sessions: sessionmaker[Session],
        director: Director,
        bundles: BundleStore,
        clock: Callable[[], datetime],
        *,
        ttl_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._director = director
        self._bundles = bundles
        self._clock = clock
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._copies: dict[str, _Copy] = {}
        self._lock = threading.Lock()
        self._sign_lock = threading.Lock()
        self._known_chains: set[str] = set()
        self._target_paths: dict[str, Path] = {}
        event.listen(sessions, "after_flush", self._note_changes)
        event.listen(sessions, "after_commit", self._after_commit)

    # --- keeping the in-memory copies true -------------------------------------------

    def _note_changes(self, session: Session, _context: object) -> None:
        for obj in (*session.new, *session.dirty, *session.deleted):
            if isinstance(obj, RepoFile) and obj.owner == REPO_WIDE:
                session.info.setdefault("repo_changed", set()).add(obj.repo)

    def _after_commit(self, session: Session) -> None:
        changed = session.info.pop("repo_changed", None)
        if changed:
            self.invalidate(*changed)

    def invalidate(self, *repos: str) -> None:
        with self._lock:
            for repo in repos or (IMAGE, DIRECTOR):
                self._copies.pop(repo, None)

    def _copy(self, repo: str) -> _Copy:
        copy = self._copies.get(repo)
        if copy is not None and self._monotonic() - copy.loaded_at < self._ttl_s:
            return copy
        loaded_at = self._monotonic()
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(RepoFile.name, RepoFile.version, RepoFile.data).where(
                    RepoFile.repo == repo, RepoFile.owner == REPO_WIDE
                )
            ).all()
        files = {name: bytes(data) for name, _version, data in rows}
        roots = [(version, name) for name, version, _data in rows if VERSIONED_ROOT.match(name)]
        latest = files[max(roots)[1]] if roots else None
        copy = _Copy(files, latest, loaded_at)
        with self._lock:
            self._copies[repo] = copy
        return copy

    def image_cached(self, name: str) -> bytes | None:
        """The Image repository file from memory if the copy is fresh, else None (read it in a thread)."""
        copy = self._copies.get(IMAGE)
        if copy is None or self._monotonic() - copy.loaded_at >= self._ttl_s:
            return None
        return self._pick(copy, IMAGE, name)

    # --- the reads ---------------------------------------------------------------------

    @staticmethod
    def _pick(copy: _Copy, repo: str, name: str) -> bytes:
        if name == "root.json":
            data = copy.latest_root
        elif VERSIONED_ROOT.match(name) or (repo == IMAGE and name in CHAIN):
            data = copy.files.get(name)
        else:
            data = None
        if data is None:
            raise NotFound(f"no {repo} metadata {name!r}")
        return data

    def image(self, name: str) -> bytes:
        return self._pick(self._copy(IMAGE), IMAGE, name)

    def _has_chain(self, vin: str) -> bool:
        if vin in self._known_chains:
            return True
        with self._engine.connect() as conn:
            found = conn.execute(
                select(RepoFile.name).where(RepoFile.repo == DIRECTOR, RepoFile.owner == vin).limit(1)
            ).first()
        if found is None:
            return False
        if len(self._known_chains) >= _KNOWN_CHAINS_MAX:
            self._known_chains.clear()
        self._known_chains.add(vin)  # a chain is never deleted
        return True

    def director(self, vin: str, name: str) -> bytes:
        """The Director's root (shared) or this VIN's own chain; 404 until the VIN has been assigned anything."""
        vin = vin.upper()
        if name == "root.json" or VERSIONED_ROOT.match(name):
            if not vin or not self._has_chain(vin):
                raise NotFound(f"no Director metadata for VIN {vin!r}")
            return self._pick(self._copy(DIRECTOR), DIRECTOR, name)
        if name not in CHAIN:
            raise NotFound(f"no Director metadata {name!r} for VIN {vin}")
        if name == "timestamp.json":
            return self._timestamp(vin)
        rows = self._rows(vin, name, PENDING)
        if PENDING in rows:  # a client asking out of order (TUF's asks for the timestamp first)
            self._sign_pending(vin)
            rows = self._rows(vin, name)
        data = rows.get(name)
        if data is None:
            raise NotFound(f"no Director metadata for VIN {vin!r}")
        return data

    def _rows(self, vin: str, *names: str) -> dict[str, bytes]:
        with self._engine.connect() as conn:
            found = conn.execute(
                select(RepoFile.name, RepoFile.data).where(
                    RepoFile.repo == DIRECTOR, RepoFile.owner == vin, RepoFile.name.in_(names)
                )
            ).all()
        return {name: bytes(data) for name, data in found}

    def _sign_pending(self, vin: str) -> None:
        # The pending row's lock serialises replicas on PostgreSQL; SQLite has no row locks,
        # so this process's threads take turns (signing holds the GIL anyway).
        with self._sign_lock, self._sessions() as session:
            try:
                self._director.sign_pending(session, vin, self._clock())  # False: another one did
                session.commit()
            except IntegrityError:  # another replica signed the first chain meanwhile: serve theirs
                session.rollback()

    def _timestamp(self, vin: str) -> bytes:
        """This VIN's timestamp: first signing its queued assignment, or re-signing a chain close to expiry."""
        rows = self._rows(vin, "timestamp.json", "snapshot.json", PENDING)
        if PENDING in rows:
            self._sign_pending(vin)
            return self._timestamp_row(vin)
        now = self._clock()
        timestamp, snapshot = rows.get("timestamp.json"), rows.get("snapshot.json")
        if timestamp is None or snapshot is None:
            raise NotFound(f"no Director metadata for VIN {vin!r}")
        expiry = self._director.expiry
        if due(_expires(timestamp), expiry.timestamp, now) or due(_expires(snapshot), expiry.snapshot, now):
            with self._sessions() as session:
                self._director.refresh(session, vin, now)
                session.commit()
            return self._timestamp_row(vin)
        return bytes(timestamp)

    def _timestamp_row(self, vin: str) -> bytes:
        data = self._rows(vin, "timestamp.json").get("timestamp.json")
        if data is None:
            raise NotFound(f"no Director metadata for VIN {vin!r}")
        return data

    def target(self, target_path: str) -> Path:
        """The file of a published bundle or delta target."""
        path = self._target_paths.get(target_path)
        if path is not None and path.exists():
            return path
        with self._sessions() as session:
            path = releases.bundle_path(session, self._bundles, target_path)
        if len(self._target_paths) >= _TARGET_PATHS_MAX:
            self._target_paths.clear()
        self._target_paths[target_path] = path
        return path
