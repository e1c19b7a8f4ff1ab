"""Reading the signed repositories back for what the agents fetch, cheaply.

Every car of a campaign fetches the same Image repository metadata, its own Director
chain and a bundle, so this is the server's hottest read path (see
``ota_server/http/repo.py``, which serves it outside the API's middleware stack):

- the Image repository and the Director root are read as one consistent set of rows and
  kept in memory for ``ttl_s`` (and dropped at once when this process commits a change
  to them), so other replicas' and the CLI's changes show within ``ttl_s``;
- a VIN's ``timestamp.json`` is one indexed query, which reads its whole chain (and its
  queued assignment); the snapshot and targets it names are kept in a bounded LRU keyed
  by (VIN, file, version). The Director's root asks for consistent snapshots, so a car
  then fetches ``N.snapshot.json`` and ``M.targets.json``: answered from memory, with no
  database access. A version is signed once, so a cached file is right on any replica;
  a miss (another replica served the timestamp) is one indexed query, and a version the
  VIN no longer has is a 404, as TUF expects. Plain ``snapshot.json``/``targets.json``
  (the latest) are still served, one query each;
- a queued assignment is signed when its car first asks for the timestamp, together
  with those of the other cars asking at that moment (:class:`SignBatcher`: one
  transaction for up to 200 VINs); the thread that signed hands each waiting request
  the bytes it wrote, so nothing is read back. Deadlocks and serialization failures
  between replicas are retried; a VIN another replica signed first is read back;
- a bundle's file is found once per target path (published targets never change);
- a database that cannot be reached (refused, cut, out of pooled connections) is
  :class:`~ota_server.errors.Unavailable`, answered 503 with ``Retry-After``: the cars ask
  again shortly instead of failing their campaign on a server's passing outage.
"""

from __future__ import annotations

import functools
import json
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

from sqlalchemy import Engine, event, select
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from firmware_bundles.uptane import due
from firmware_bundles.vin import normalize_vin
from ota_server.db.models import RepoFile
from ota_server.errors import NotFound, Unavailable
from ota_server.infra.bundle_store import BundleStore
from ota_server.schemas import text_problem
from ota_server.services import releases
from ota_server.signing.chains import Chain
from ota_server.signing.director import PENDING, Director
from ota_server.signing.store import CHAIN, DIRECTOR, IMAGE, REPO_WIDE

VERSIONED_ROOT = re.compile(r"^([1-9][0-9]{0,8})\.root\.json$")
VERSIONED_CHAIN = re.compile(r"^([1-9][0-9]{0,8})\.(snapshot|targets)\.json$")
_KNOWN_CHAINS_MAX = 500_000
_TARGET_PATHS_MAX = 10_000
CHAIN_CACHE_MAX = 200_000  # entries, two per car served: ~0.8 KB each with one image (~160 MB when full)
SIGN_BATCH_MAX = 200
_ATTEMPTS = 5
# PostgreSQL's deadlock_detected and serialization_failure: the transaction may simply be run again.
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})
_SERVED = ("timestamp.json", "snapshot.json", "targets.json", PENDING)
# What a car is told to wait while the database is unreachable (its agent backs off from here).
UNAVAILABLE_RETRY_AFTER_S = 5.0
T = TypeVar("T")
P = ParamSpec("P")


def unservable(path: str) -> str | None:
    """Why no repository file can have this (decoded) path, or None.

    A control character (``%00`` and the like) names no file, and PostgreSQL cannot even be
    asked about it: 404 here, before any lookup, the same on every backend.
    """
    problem = text_problem(path)
    return None if problem is None else f"no such file: the path {problem.split(':')[0]}; repository paths never do"


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


def _retryable(exc: DBAPIError) -> bool:
    """A deadlock or serialization failure (run the transaction again), or a key another replica wrote first."""
    if isinstance(exc, IntegrityError):
        return True
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code in _RETRY_SQLSTATES


def _unreachable(exc: DBAPIError | PoolTimeout) -> bool:
    """The database is not answering (refused, cut, restarting, no pooled connection free), as
    opposed to a query this code got wrong, which stays a 500."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    return exc.connection_invalidated


@contextmanager
def _database_reachable() -> Iterator[None]:
    try:
        yield
    except (DBAPIError, PoolTimeout) as exc:
        if not _unreachable(exc):
            raise
        raise Unavailable("the database is unavailable; try again shortly", UNAVAILABLE_RETRY_AFTER_S) from exc


def _reachable(read: Callable[P, T]) -> Callable[P, T]:
    """A read whose database failure is :class:`Unavailable` (a 503 the agents retry), not a 500."""

    @functools.wraps(read)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with _database_reachable():
            return read(*args, **kwargs)

    return wrapper


class ChainCache:
    """Served Director files by (VIN, file name, version), least recently used dropped first.

    A (VIN, file, version) is signed once, so an entry never goes stale: a replica's copy
    is right whatever the others sign later.
    """

    def __init__(self, max_entries: int = CHAIN_CACHE_MAX) -> None:
        self._max = max_entries
        self._files: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, vin: str, name: str, version: int) -> bytes | None:
        key = (vin, name, version)
        with self._lock:
            data = self._files.get(key)
            if data is not None:
                self._files.move_to_end(key)
            return data

    def put(self, vin: str, name: str, version: int, data: bytes) -> None:
        key = (vin, name, version)
        with self._lock:
            self._files[key] = data
            self._files.move_to_end(key)
            while len(self._files) > self._max:
                self._files.popitem(last=False)

    def put_chain(self, vin: str, chain: Mapping[str, tuple[int, bytes]]) -> None:
        """Keep the snapshot and targets a served timestamp names (the timestamp itself is always read)."""
        for name in ("snapshot.json", "targets.json"):
            found = chain.get(name)
            if found is not None:
                self.put(vin, name, found[0], found[1])

    def __len__(self) -> int:
        return len(self._files)


class _Ticket:
    """One VIN's place in :class:`SignBatcher`: its chain (None: nothing was queued) or the error."""

    __slots__ = ("chain", "done", "error")

    def __init__(self) -> None:
        self.done = False
        self.chain: Chain | None = None
        self.error: BaseException | None = None

    def result(self) -> Chain | None:
        if self.error is not None:
            raise self.error
        return self.chain


class SignBatcher:
    """Signs the queued assignments of the cars asking at once, together.

    A thread asking for a VIN while no batch is being signed signs it, with every VIN
    waiting then (up to ``max_batch``), in one call of ``sign``; threads asking meanwhile
    wait, and the first of them to wake signs the next batch. Threads asking for the same
    VIN share one answer. ``sign`` maps the VINs it signed to their chains; a VIN it
    leaves out had nothing queued any more.
    """

    def __init__(self, sign: Callable[[list[str]], dict[str, Chain]], *, max_batch: int = SIGN_BATCH_MAX) -> None:
        self._sign = sign
        self._max = max_batch
        self._cond = threading.Condition()
        self._waiting: dict[str, _Ticket] = {}
        self._busy = False
        self._asking = 0

    def asking(self) -> int:
        """How many requests are signing or waiting for a batch now."""
        with self._cond:
            return self._asking

    def sign(self, vin: str) -> Chain | None:
        with self._cond:
            self._asking += 1
        try:
            return self._sign_one(vin)
        finally:
            with self._cond:
                self._asking -= 1

    def _sign_one(self, vin: str) -> Chain | None:
        with self._cond:
            ticket = self._waiting.get(vin)
            if ticket is None:
                ticket = self._waiting[vin] = _Ticket()
            while self._busy and not ticket.done:
                self._cond.wait()
            if ticket.done:
                return ticket.result()
            self._busy = True
            batch = {vin: self._waiting.pop(vin)}
            while self._waiting and len(batch) < self._max:
                other = next(iter(self._waiting))
                batch[other] = self._waiting.pop(other)
        chains: dict[str, Chain] = {}
        error: BaseException | None = None
        try:
            chains = self._sign(list(batch))
        except BaseException as exc:  # every waiting request gets it, not just this one
            error = exc
        with self._cond:
            for other, waiting in batch.items():
                waiting.chain, waiting.error, waiting.done = chains.get(other), error, True
            self._busy = False
            self._cond.notify_all()
        return ticket.result()


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
        chain_cache_max: int = CHAIN_CACHE_MAX,
        sign_batch_max: int = SIGN_BATCH_MAX,
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
        self.chains = ChainCache(chain_cache_max)
        # One batch signs at a time in this process: SQLite has no row locks (one writer at a
        # time), and on PostgreSQL the queued rows' locks serialise replicas.
        self._batcher = SignBatcher(self._sign_batch, max_batch=sign_batch_max)
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

    @_reachable
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

    @_reachable
    def director(self, vin: str, name: str) -> bytes:
        """The Director's root (shared) or this VIN's own chain; 404 until the VIN has been assigned anything."""
        vin = normalize_vin(vin)
        if name == "root.json" or VERSIONED_ROOT.match(name):
            copy = self._copy(DIRECTOR)
            if name != "root.json" and name not in copy.files:
                raise NotFound(f"no Director metadata {name!r}")  # the probe for a rotation: no VIN query
            if not vin or not self._has_chain(vin):
                raise NotFound(f"no Director metadata for VIN {vin!r}")
            return self._pick(copy, DIRECTOR, name)
        if name == "timestamp.json":
            return self._timestamp(vin)
        versioned = VERSIONED_CHAIN.match(name)
        if versioned:
            return self._versioned(vin, f"{versioned[2]}.json", int(versioned[1]))
        if name not in CHAIN:
            raise NotFound(f"no Director metadata {name!r} for VIN {vin}")
        rows = self._rows(vin, name, PENDING)
        if PENDING in rows:  # a client asking out of order (TUF's asks for the timestamp first)
            chain = self._batcher.sign(vin)
            rows = chain if chain is not None else self._rows(vin, name)
        found = rows.get(name)
        if found is None:
            raise NotFound(f"no Director metadata for VIN {vin!r}")
        return found[1]

    def director_cached(self, vin: str, name: str) -> bytes | None:
        """A versioned snapshot or targets from memory (no database, no thread), else None.

        The agent's probe for a rotated Director root (``N+1.root.json``, once per refresh) is
        answered here too while the copy of the repo-wide files is fresh: a root version that
        does not exist is a 404 whatever the VIN, so neither the thread hop nor the query for
        the VIN's chain is needed (issue 19: that query was the one statement every car cost).
        """
        if VERSIONED_ROOT.match(name):
            copy = self._copies.get(DIRECTOR)
            if copy is not None and self._monotonic() - copy.loaded_at < self._ttl_s and name not in copy.files:
                raise NotFound(f"no Director metadata {name!r}")
            return None
        versioned = VERSIONED_CHAIN.match(name)
        if versioned is None:
            return None
        return self.chains.get(normalize_vin(vin), f"{versioned[2]}.json", int(versioned[1]))

    def _versioned(self, vin: str, name: str, version: int) -> bytes:
        """``N.snapshot.json``/``M.targets.json``: from memory after the timestamp naming it, else one query."""
        data = self.chains.get(vin, name, version)
        if data is not None:
            return data
        found = self._rows(vin, name).get(name)
        if found is None or found[0] != version:  # never signed, or replaced since: TUF expects a 404
            raise NotFound(f"no Director metadata {version}.{name} for VIN {vin!r}")
        self.chains.put(vin, name, version, found[1])
        return found[1]

    def _rows(self, vin: str, *names: str) -> dict[str, tuple[int, bytes]]:
        with self._engine.connect() as conn:
            found = conn.execute(
                select(RepoFile.name, RepoFile.version, RepoFile.data).where(
                    RepoFile.repo == DIRECTOR, RepoFile.owner == vin, RepoFile.name.in_(names)
                )
            ).all()
        return {name: (version, bytes(data)) for name, version, data in found}

    def _committed(self, work: Callable[[Session], T]) -> T:
        """``work`` in a transaction, committed; run again on a deadlock, a serialization
        failure or a key another replica wrote first (each attempt sees what they committed)."""
        for attempt in range(_ATTEMPTS):
            with self._sessions() as session:
                try:
                    result = work(session)
                    session.commit()
                    return result
                except DBAPIError as exc:
                    session.rollback()
                    if attempt + 1 == _ATTEMPTS or not _retryable(exc):
                        raise
            time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    def signing_asked(self) -> int:
        """How many requests are signing a queued assignment or waiting for a batch now."""
        return self._batcher.asking()

    def _sign_batch(self, vins: Sequence[str]) -> dict[str, Chain]:
        chains = self._committed(lambda session: self._director.sign_queued(session, vins, self._clock()))
        for vin, chain in chains.items():
            self.chains.put_chain(vin, chain)
        return chains

    def _timestamp(self, vin: str) -> bytes:
        """This VIN's timestamp: first signing its queued assignment, or re-signing a chain close to expiry."""
        for _ in range(2):
            rows = self._rows(vin, *_SERVED)
            if PENDING not in rows:
                break
            chain = self._batcher.sign(vin)
            if chain is not None:
                return chain["timestamp.json"][1]
            # another replica signed it first: read back its chain (or the next one queued since)
        timestamp, snapshot = rows.get("timestamp.json"), rows.get("snapshot.json")
        if timestamp is None or snapshot is None or "targets.json" not in rows:
            raise NotFound(f"no Director metadata for VIN {vin!r}")
        now = self._clock()
        expiry = self._director.expiry
        if due(_expires(timestamp[1]), expiry.timestamp, now) or due(_expires(snapshot[1]), expiry.snapshot, now):
            _changed, chain = self._committed(lambda session: self._director.refreshed(session, vin, now))
            if chain is None:
                raise NotFound(f"no Director metadata for VIN {vin!r}")
            rows = chain
        self.chains.put_chain(vin, rows)
        return rows["timestamp.json"][1]

    @_reachable
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
