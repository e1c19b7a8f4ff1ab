"""Verify Image and Director metadata with python-tuf and check that they agree.

Each refresh uses fresh ``tuf.ngclient.Updater`` objects (an Updater refreshes once)
over metadata directories that persist between runs, so a replayed older timestamp,
snapshot or targets (freeze, rollback) is caught against what this car last trusted.
Every TUF error maps to one precise :class:`FailureReason`.

A notice may carry the Director's timestamp, snapshot and targets for this car
(:class:`~firmware_bundles.messages.DirectorMetadata`). :meth:`Verifier.verify` then refreshes
the Director from those bytes, served once each by :class:`CarriedFetcher` in place of the
network (root probes still go to the network), so python-tuf checks them exactly as fetched
ones. It does so in a scratch copy of the trusted metadata, kept only when every check passed
(TUF's and "for this VIN"): bytes that fail, forged or replayed or for another car, leave the
car's trusted state untouched (nothing an attacker on MQTT sends can raise a version the real
chain must then beat); the refusal is logged with its reason (:attr:`Verifier.carried_refusal`)
and the car fetches over HTTP as if nothing had been carried.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import FetcherInterface, Updater

from firmware_bundles import canonical, repo_paths
from firmware_bundles.consent import CONSENT_FIELD, SignedConsent
from firmware_bundles.errors import TargetMismatch
from firmware_bundles.messages import CarriedMetadata, DirectorMetadata, FailureReason, ImageMetadata
from firmware_bundles.uptane import Assignment, assignments_for, check_image_agrees
from firmware_bundles.window import WINDOW_FIELD, InstallWindow
from vehicle_agent.config import AgentConfig
from vehicle_agent.errors import UpdateFailed, transient_status
from vehicle_agent.journal import single_writer_temp, write_atomically
from vehicle_agent.transport import Transport, TufFetcher

log = logging.getLogger(__name__)

# Most specific first: EqualVersionNumberError is a BadVersionNumberError, the
# download errors share DownloadError.
_TUF_REASONS: tuple[tuple[type[Exception], FailureReason], ...] = (
    (tuf_exceptions.UnsignedMetadataError, FailureReason.METADATA_SIGNATURE_INVALID),
    (tuf_exceptions.ExpiredMetadataError, FailureReason.METADATA_EXPIRED),
    (tuf_exceptions.BadVersionNumberError, FailureReason.METADATA_ROLLBACK),
    # attacks on the transfer, told apart from an outage so operators see them as such
    (tuf_exceptions.SlowRetrievalError, FailureReason.DOWNLOAD_TOO_SLOW),
    (tuf_exceptions.DownloadLengthMismatchError, FailureReason.LENGTH_MISMATCH),
    (tuf_exceptions.DownloadError, FailureReason.METADATA_FETCH_FAILED),
    (tuf_exceptions.RepositoryError, FailureReason.METADATA_INVALID),
)


def reason_for(exc: Exception) -> FailureReason:
    """The failure reason for a python-tuf exception."""
    for kind, reason in _TUF_REASONS:
        if isinstance(exc, kind):
            return reason
    return FailureReason.INTERNAL_ERROR


def _transient(exc: Exception) -> bool:
    """The repository was not there or said "not now" (503 while its database is down), as
    opposed to an answer about the metadata itself or an attack on the transfer."""
    if reason_for(exc) is not FailureReason.METADATA_FETCH_FAILED:
        return False
    return transient_status(exc.status_code if isinstance(exc, tuf_exceptions.DownloadHTTPError) else None)


@contextmanager
def _tuf_errors(repository: str) -> Iterator[None]:
    try:
        yield
    except (tuf_exceptions.RepositoryError, tuf_exceptions.DownloadError) as exc:
        raise UpdateFailed(
            reason_for(exc), f"{repository}: {type(exc).__name__}: {exc}", transient=_transient(exc)
        ) from exc
    except TargetMismatch as exc:
        raise UpdateFailed(FailureReason(exc.reason), exc.detail) from exc


_CARRIED_NAME = re.compile(r"^(?:\d+\.)?(timestamp|snapshot|targets)\.json$")


T = TypeVar("T")


@dataclass(frozen=True)
class Carried:
    """What a notice carried for the verifier: the Director's files for this car, the Image repository's."""

    director: DirectorMetadata | None = None
    image: ImageMetadata | None = None


class LeanUpdater(Updater):
    """python-tuf's ``Updater`` as the agent uses it: the same checks and files, for less CPU.

    Its signature checks encode on the contract's orjson canonical encoder
    (:func:`firmware_bundles.canonical.use_for_signed_bytes`), and it writes each verified file
    as the journal writes itself.

    ``Updater._persist_file`` makes a ``tempfile.NamedTemporaryFile`` (a random name, a file
    object and its wrapper) for each of the eight files a car's two refreshes write: ~4% of a
    car's CPU (issue 19). Here: the one temp name of that file, then the same rename over it
    (:func:`~vehicle_agent.journal.write_atomically`, not fsynced, as python-tuf does not). One
    refresh writes a directory at a time, so the name is its own. Should python-tuf rename the
    method, its own runs again: slower, never different.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        canonical.use_for_signed_bytes()  # its signature checks encode on orjson: the same bytes
        super().__init__(*args, **kwargs)

    def _persist_file(self, filename: str, data: bytes) -> None:
        path = Path(filename)
        write_atomically(path, data, durable=False, temp=single_writer_temp(path))


class CarriedFetcher(FetcherInterface):
    """Answers a repository's timestamp, snapshot and targets from a notice's bytes, once each;
    any other URL (root probes, a second ask) goes to ``network``."""

    def __init__(self, network: FetcherInterface, base_url: str, carried: CarriedMetadata) -> None:
        self._network = network
        self._base = base_url
        self._files = {role: getattr(carried, role).encode() for role in ("timestamp", "snapshot", "targets")}
        self.served: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url[len(self._base) :] if url.startswith(self._base) else ""
        match = _CARRIED_NAME.match(name)
        data = self._files.pop(match[1], None) if match else None
        if data is None:
            return self._network.fetch(url)
        self.served.append(name)
        return iter((data,))


@dataclass(frozen=True)
class VerifiedTargets:
    """The checked assignments for this car, each agreeing with the Image repository.

    ``image_repo`` is the refreshed Image-repository client, for looking up more
    targets (deltas) against the same verified metadata. ``consent`` is the owner-page
    answer the Director signed into the same targets metadata (``consent_problem`` says
    why a ``consent`` field there was not usable). ``window`` is the car's maintenance window
    the Director signed into the same metadata (None: it may install at any hour).
    """

    assignments: tuple[Assignment, ...]
    image_repo: Updater | None = None
    consent: SignedConsent | None = None
    consent_problem: str = ""
    window: InstallWindow | None = None


class Verifier:
    """Refreshes both repositories for one car; blocking, so the agent runs it in a thread."""

    def __init__(
        self, config: AgentConfig, transport: Transport, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._fetcher = TufFetcher(transport, limits=config.download, monotonic=monotonic)
        metadata = config.state_dir / "metadata"
        self.image_dir = metadata / "image"
        self.director_dir = metadata / "director"
        # why the last carried Director metadata was refused (None: used, or none carried)
        self.carried_refusal: UpdateFailed | None = None
        # the same for the last carried Image repository metadata
        self.carried_image_refusal: UpdateFailed | None = None

    def _updater(self, directory: Path, url: str, root: bytes) -> Updater:
        directory.mkdir(parents=True, exist_ok=True)
        # Always bootstrapping from the shipped root is safe: newer roots already
        # verified are found again in directory/root_history before any download.
        return LeanUpdater(str(directory), url, fetcher=self._fetcher, bootstrap=root)

    def verify(self, carried: Carried | DirectorMetadata | None = None) -> VerifiedTargets:
        """Refresh Director then Image metadata; raise :class:`UpdateFailed` on any refusal.

        ``carried``: the files from the notice, tried first (see the module's note).
        """
        cfg = self._config
        given = carried if isinstance(carried, Carried) else Carried(director=carried)
        url = repo_paths.director_metadata_url(cfg.repo_url, cfg.vin)
        self.carried_refusal = self.carried_image_refusal = None
        director = None
        if given.director is not None:
            director = self._carried(
                "director", self.director_dir, url, cfg.director_root, given.director, self._director
            )
        if director is None:
            with _tuf_errors("director"):
                director = self._director(self.director_dir, self._updater(self.director_dir, url, cfg.director_root))
        assignments, consent, problem, window = director
        image_url = repo_paths.image_metadata_url(cfg.repo_url)
        image = None
        if given.image is not None:
            image = self._carried(
                "image repository", self.image_dir, image_url, cfg.image_root, given.image, _refreshed(assignments)
            )
        if image is None:
            with _tuf_errors("image repository"):
                image = _refreshed(assignments)(
                    self.image_dir, self._updater(self.image_dir, image_url, cfg.image_root)
                )
        return VerifiedTargets(tuple(assignments), image, consent, problem, window)

    def _director(self, directory: Path, updater: Updater) -> _Director:
        updater.refresh()
        # ngclient has no call listing targets: read what it verified and persisted.
        signed = Metadata[Targets].from_file(str(directory / "targets.json")).signed
        assignments = assignments_for(signed, self._config.vin, self._config.ecu_hardware())
        consent, problem = _signed_consent(signed)
        return assignments, consent, problem, _signed_window(signed)

    def _carried(
        self,
        repository: str,
        directory: Path,
        url: str,
        root: bytes,
        carried: CarriedMetadata,
        refresh: Callable[[Path, Updater], T],
    ) -> T | None:
        """``refresh`` from carried bytes in a scratch copy of ``directory``, kept only if all of it passed.

        None (and the reason in :attr:`carried_refusal` or :attr:`carried_image_refusal`) when refused.
        """
        directory.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".carried-", dir=directory.parent))
        try:
            shutil.copytree(directory, scratch, symlinks=True, dirs_exist_ok=True)
            fetcher = CarriedFetcher(self._fetcher, url, carried)
            updater = LeanUpdater(str(scratch), url, fetcher=fetcher, bootstrap=root)
            trusted = _timestamp_version(scratch)
            with _tuf_errors(f"{repository} (carried in the notice)"):
                found = refresh(scratch, updater)
            if trusted is not None and _timestamp_version(scratch) == trusted:
                # python-tuf keeps an equal timestamp silently: carried, it is a replay of
                # what the car has (which would hide newer metadata), so ask the server
                raise UpdateFailed(
                    FailureReason.METADATA_ROLLBACK, f"{repository}: carried timestamp version {trusted} is not newer"
                )
            _keep(scratch, directory)
            return found
        except UpdateFailed as exc:
            director = directory == self.director_dir
            if director:
                self.carried_refusal = exc
            else:
                self.carried_image_refusal = exc
            log.warning(
                "%s: carried %s metadata refused (%s: %s); fetching it over HTTP",
                self._config.vin,
                "Director" if director else "Image",
                exc.reason.value,
                exc.detail,
            )
            return None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _refreshed(assignments: list[Assignment]) -> Callable[[Path, Updater], Updater]:
    """Refresh the Image repository and check every assignment agrees with it."""

    def refresh(_directory: Path, image: Updater) -> Updater:
        image.refresh()
        for assignment in assignments:
            check_image_agrees(assignment, image.get_targetinfo(assignment.path))
        return image

    return refresh


_Director = tuple[list[Assignment], SignedConsent | None, str, InstallWindow | None]


def _timestamp_version(directory: Path) -> int | None:
    """The version of the timestamp trusted in ``directory`` (None: none yet, or unreadable)."""
    try:  # python-tuf wrote it once verified: its version is all that is read, not a whole Metadata
        version = json.loads((directory / "timestamp.json").read_bytes())["signed"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _keep(scratch: Path, trusted: Path) -> None:
    """Move the verified files over the trusted ones: root history first, then in TUF's own order.

    By ``os.scandir`` and plain strings: at every notice (twice), where pathlib's objects
    and stat calls were ~4% of a simulated car's CPU (issue 19).
    """
    order = {"root.json": 1, "timestamp.json": 2, "snapshot.json": 3, "targets.json": 4}
    source, target = os.fspath(scratch), os.fspath(trusted)
    made: set[str] = set()
    for name in sorted(_files_under(source), key=lambda name: (order.get(name, 0), name)):
        folder = os.path.dirname(name)
        if folder not in made:
            os.makedirs(os.path.join(target, folder), exist_ok=True)
            made.add(folder)
        os.replace(os.path.join(source, name), os.path.join(target, name))


def _files_under(top: str, prefix: str = "") -> Iterator[str]:
    """The files and symlinks under ``top`` (symlinked folders not followed), as relative paths."""
    with os.scandir(top) as entries:
        for entry in entries:
            name = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from _files_under(entry.path, name + "/")
            else:
                yield name


def _signed_consent(signed: Targets) -> tuple[SignedConsent | None, str]:
    body = signed.unrecognized_fields.get(CONSENT_FIELD)
    if body is None:
        return None, ""
    try:
        return SignedConsent.from_json(body), ""
    except ValueError as exc:
        return None, str(exc)


def _signed_window(signed: Targets) -> InstallWindow | None:
    """The signed maintenance window; a malformed one refuses the metadata (never "any hour")."""
    body = signed.unrecognized_fields.get(WINDOW_FIELD)
    if body is None:
        return None
    try:
        return InstallWindow.from_json(body)
    except ValueError as exc:
        raise UpdateFailed(FailureReason.METADATA_INVALID, f"director: {exc}") from exc
