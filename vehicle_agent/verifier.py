"""Verify Image and Director metadata with python-tuf and check that they agree.

Each refresh uses fresh ``tuf.ngclient.Updater`` objects (an Updater refreshes once)
over metadata directories that persist between runs, so a replayed older timestamp,
snapshot or targets (freeze, rollback) is caught against what this car last trusted.
Every TUF error maps to one precise :class:`FailureReason`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import Updater

from firmware_bundles import repo_paths
from firmware_bundles.consent import CONSENT_FIELD, SignedConsent
from firmware_bundles.errors import TargetMismatch
from firmware_bundles.messages import FailureReason
from firmware_bundles.uptane import Assignment, assignments_for, check_image_agrees
from firmware_bundles.window import WINDOW_FIELD, InstallWindow
from vehicle_agent.config import AgentConfig
from vehicle_agent.errors import UpdateFailed, transient_status
from vehicle_agent.transport import Transport, TufFetcher

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

    def _updater(self, directory: Path, url: str, root: bytes) -> Updater:
        directory.mkdir(parents=True, exist_ok=True)
        # Always bootstrapping from the shipped root is safe: newer roots already
        # verified are found again in directory/root_history before any download.
        return Updater(str(directory), url, fetcher=self._fetcher, bootstrap=root)

    def verify(self) -> VerifiedTargets:
        """Refresh Director then Image metadata; raise :class:`UpdateFailed` on any refusal."""
        cfg = self._config
        with _tuf_errors("director"):
            director = self._updater(
                self.director_dir, repo_paths.director_metadata_url(cfg.repo_url, cfg.vin), cfg.director_root
            )
            director.refresh()
            # ngclient has no call listing targets: read what it verified and persisted.
            signed = Metadata[Targets].from_file(str(self.director_dir / "targets.json")).signed
            assignments = assignments_for(signed, cfg.vin, cfg.ecu_hardware())
            consent, problem = _signed_consent(signed)
            window = _signed_window(signed)
        with _tuf_errors("image repository"):
            image = self._updater(self.image_dir, repo_paths.image_metadata_url(cfg.repo_url), cfg.image_root)
            image.refresh()
            for assignment in assignments:
                check_image_agrees(assignment, image.get_targetinfo(assignment.path))
        return VerifiedTargets(tuple(assignments), image, consent, problem, window)


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
