"""The downloading and verifying steps: verified metadata in, checked bundles on disk out.

Cut here because this is where the car meets the repositories: this module owns the
verify/download stack (python-tuf, httpx, bsdiff4), built on first use so an idle car never
loads it, and everything that decides what to fetch (release counters, recall floors, the
network rule once the signed size is known, deltas first). The orchestrator only moves the
campaign record; the install step reads what this step left in ``downloads``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from firmware_bundles.assignment import Assignment
from firmware_bundles.consent import images_key
from firmware_bundles.messages import FailureReason, Preconditions
from vehicle_agent.config import AgentConfig
from vehicle_agent.errors import UpdateFailed
from vehicle_agent.gate import ConsentOutdated, HeldAtDownload, check
from vehicle_agent.installer import SlotBackend, check_bundle
from vehicle_agent.journal import Journal, Target
from vehicle_agent.vehicle import VehicleState

if TYPE_CHECKING:
    from vehicle_agent.delta import DeltaApplier
    from vehicle_agent.fetcher import BundleFetcher
    from vehicle_agent.transport import Transport
    from vehicle_agent.verifier import Carried, Verifier


class DownloadStep:
    """Verify the metadata, decide what each ECU needs, fetch it (a delta when one applies), check it.

    ``carried`` hands over the metadata files a notice carried (once); ``journal`` is read for
    the installed versions and keeps the recall floors this step raises.
    """

    def __init__(
        self,
        config: AgentConfig,
        transport: Transport,
        *,
        journal: Journal,
        slots: Mapping[str, SlotBackend],
        vehicle: VehicleState,
        carried: Callable[[], Carried | None],
        monotonic: Callable[[], float] = time.monotonic,
        download_sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._config = config
        self._transport = transport
        self._journal = journal
        self._slots = slots
        self._vehicle = vehicle
        self._carried = carried
        self._monotonic = monotonic
        self._download_sleep = download_sleep
        self._pipeline: tuple[Verifier, BundleFetcher, DeltaApplier] | None = None

    def _parts(self) -> tuple[Verifier, BundleFetcher, DeltaApplier]:
        if self._pipeline is None:
            from vehicle_agent.delta import DeltaApplier
            from vehicle_agent.fetcher import BundleFetcher
            from vehicle_agent.verifier import Verifier

            cfg = self._config
            fetcher = BundleFetcher(
                self._transport,
                cfg.repo_url,
                cfg.state_dir / "downloads",
                limits=cfg.download,
                monotonic=self._monotonic,
                sleep=self._download_sleep,
            )
            deltas = DeltaApplier(fetcher, max_image_bytes=cfg.download.max_delta_image_bytes)
            self._pipeline = (Verifier(cfg, self._transport, monotonic=self._monotonic), fetcher, deltas)
        return self._pipeline

    @property
    def verifier(self) -> Verifier:
        return self._parts()[0]

    @property
    def fetcher(self) -> BundleFetcher:
        return self._parts()[1]

    @property
    def _deltas(self) -> DeltaApplier:
        return self._parts()[2]

    def download(
        self, preconditions: Preconditions | None = None, consented: str | None = None
    ) -> tuple[tuple[Target, ...], str]:
        """Verify, then fetch what is to be installed; ``consented``: the images key the owner said yes to.

        Also returns the signed maintenance window (JSON, "" for any hour): the install waits for it.
        """
        verified = self.verifier.verify(self._carried())
        if consented is not None:
            signed = images_key(a.sha256 for a in verified.assignments)
            if signed != consented:
                raise ConsentOutdated(consented, signed)
        todo = [a for a in verified.assignments if self._needs_install(a)]
        size = sum(a.length for a in todo)  # signed: now the network rule for large bundles applies
        hold = check(preconditions, self._vehicle.read(), size) if todo else None
        if hold is not None:
            raise HeldAtDownload(hold, size)
        for assignment in todo:
            with naming(assignment.ecu_serial):
                slots = self._slots[assignment.ecu_serial]
                delta = verified.image_repo and self._deltas.try_delta(assignment, verified.image_repo, slots)
                if not delta:
                    self.fetcher.fetch(assignment)
        window = json.dumps(verified.window.to_json(), separators=(",", ":")) if verified.window else ""
        return tuple(Target(a) for a in todo), window

    def _needs_install(self, assignment: Assignment) -> bool:
        version, counter = self._journal.data.installed[assignment.ecu_serial]
        if assignment.release_counter < counter:
            raise UpdateFailed(
                FailureReason.METADATA_ROLLBACK,
                f"{assignment.path}: release counter {assignment.release_counter} is below installed {counter}",
            )
        self._check_floor(assignment)
        return assignment.version != version

    def _check_floor(self, assignment: Assignment) -> None:
        """Refuse an image below the highest recall minimum this ECU has seen, and remember new ones.

        A floor is kept only when the assigned image itself meets it: the image's counter is
        signed by the Image repository too, so a Director key alone cannot raise the floor
        above any released image. It is saved with the step's next journal write.
        """
        wanted = assignment.min_release_counter
        if wanted is not None and assignment.release_counter < wanted:
            raise UpdateFailed(
                FailureReason.BELOW_MINIMUM_VERSION,
                f"{assignment.path}: release counter {assignment.release_counter} is below the recall's "
                f"minimum {wanted}",
            )
        floor = self._journal.raise_floor(assignment.ecu_serial, wanted or 0)
        if assignment.release_counter < floor:
            raise UpdateFailed(
                FailureReason.BELOW_MINIMUM_VERSION,
                f"{assignment.path}: release counter {assignment.release_counter} is below the minimum {floor} "
                "an earlier recall set for this ECU",
            )

    def verify_bundles(self, targets: tuple[Target, ...]) -> None:
        for target in targets:
            with naming(target.assignment.ecu_serial):
                if rebuilt_image(self.fetcher.downloads, target.assignment) is None:  # a delta's is checked there
                    check_bundle(self.fetcher.fetch(target.assignment), target.assignment)

    def discard(self, targets: tuple[Target, ...], *, everything: bool) -> None:
        """Drop a withdrawn campaign's files: all of them when no other campaign is running, else its targets'."""
        downloads = self._config.state_dir / "downloads"
        if not downloads.is_dir():
            return
        prefixes = tuple(t.assignment.sha256 for t in targets)
        for path in downloads.iterdir():
            if path.is_file() and (everything or (bool(prefixes) and path.name.startswith(prefixes))):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def rebuilt_image(downloads: Path, assignment: Assignment) -> Path | None:
    """The image a delta rebuilt for ``assignment``, if any (bsdiff4 loads only when asked)."""
    from vehicle_agent.delta import rebuilt_image

    return rebuilt_image(downloads, assignment)


@contextlib.contextmanager
def naming(serial: str) -> Iterator[None]:
    """A failure in one ECU's step (download, check, install) names that ECU in the report."""
    try:
        yield
    except UpdateFailed as exc:
        if exc.ecu_serial is None:
            exc.ecu_serial = serial
        raise
