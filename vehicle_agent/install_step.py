"""The installing and rebooting steps: write the spare slot, try it once, health-check, commit or undo.

Cut here because this is the only code that changes what the car boots: it owns the A/B slot
backends and the health check, and nothing else writes, arms, commits or rolls back a slot
(:mod:`vehicle_agent.installer` does one slot write; this module decides which and when). The
orchestrator journals each step before calling in, so a reboot in the middle resumes here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

from firmware_bundles.assignment import Assignment
from firmware_bundles.messages import FailureReason
from vehicle_agent.config import AgentConfig, EcuConfig
from vehicle_agent.download_step import naming, rebuilt_image
from vehicle_agent.errors import ConfigError, UpdateFailed
from vehicle_agent.health import CommandHealthCheck, HeaderHealthCheck, HealthCheck
from vehicle_agent.installer import FileSlots, SlotBackend, install, install_image
from vehicle_agent.journal import Target

if TYPE_CHECKING:
    from vehicle_agent.fetcher import BundleFetcher

log = logging.getLogger(__name__)

SlotFactory = Callable[[EcuConfig], SlotBackend]


class InstallStep:
    """Every ECU's slots and the health check of a trial boot.

    ``fetcher`` gives the download step's fetcher (built on first use) where the bundles wait;
    ``installed`` records an ECU's new image once its slot is committed.
    """

    def __init__(
        self,
        config: AgentConfig,
        slots: Mapping[str, SlotBackend] | SlotFactory | None,
        health: HealthCheck | None,
        *,
        fetcher: Callable[[], BundleFetcher],
        installed: Callable[[Assignment], None],
    ) -> None:
        self._vin = config.vin
        self.slots = make_slots(config, slots)
        self._health = health or default_health(config)
        self._fetcher = fetcher
        self._installed = installed

    def settle(self, owned: Collection[str]) -> None:
        """A trial boot or armed try that no unfinished campaign owns (e.g. the power went
        while rolling back) goes back to the committed slot; ``owned``: ECU serials in use."""
        for serial, slots in self.slots.items():
            if serial in owned:
                continue
            with contextlib.suppress(UpdateFailed, OSError):
                if slots.booted_slot() != slots.active_slot() or slots.pending_try() is not None:
                    log.warning("%s: ECU %s has an unowned trial boot; rolling back", self._vin, serial)
                    slots.rollback()

    def install(self, targets: tuple[Target, ...]) -> tuple[Target, ...]:
        done = []
        for target in targets:
            slots = self.slots[target.assignment.ecu_serial]
            if slots.booted_slot() != slots.active_slot():
                slots.rollback()  # a trial boot we did not start: back to the committed slot first
            with naming(target.assignment.ecu_serial):
                image = rebuilt_image(self._fetcher().downloads, target.assignment)
                if image is not None:
                    slot = install_image(image, target.assignment, slots)
                else:
                    slot = install(self._fetcher().fetch(target.assignment), target.assignment, slots)
            done.append(Target(target.assignment, slot))
        return tuple(done)

    def on_trial(self, targets: tuple[Target, ...]) -> bool:
        """Whether any target's slot is still on trial (not yet the committed slot).

        Only a trial is bounded by ``max_boot_attempts``: a committed slot runs the fix, so
        however many starts a crash after the commit costs, it is never reported rolled back.
        """
        return any(self.slots[t.assignment.ecu_serial].active_slot() != t.slot for t in targets)

    def reboot_and_commit(self, targets: tuple[Target, ...]) -> None:
        """Boot, health-check and commit the slots still on trial; then record every target installed.

        A target already committed (a crash came after its commit) is neither booted nor
        checked again. By default the commit follows only a healthy trial boot of every
        target; under the recall's signed ``keep_successful`` policy the healthy ones are
        committed and recorded, and the first failing ECU's failure is raised (``kept``).
        """
        trial = tuple(t for t in targets if self.slots[t.assignment.ecu_serial].active_slot() != t.slot)
        failures: dict[str, UpdateFailed] = {}
        for target in trial:
            slots = self.slots[target.assignment.ecu_serial]
            if slots.booted_slot() != target.slot and slots.pending_try() == target.slot:
                slots.reboot()
            if slots.booted_slot() != target.slot:  # the one-shot try was spent (or failed) and we are back
                failures[target.assignment.ecu_serial] = _fell_back(target, slots)
                if not _keeps_successful(targets):
                    raise failures[target.assignment.ecu_serial]
        for target in trial:
            if target.assignment.ecu_serial in failures:
                continue
            slots = self.slots[target.assignment.ecu_serial]
            problem = self._health.check(slots, target.assignment)
            if problem is not None:
                failures[target.assignment.ecu_serial] = UpdateFailed(
                    FailureReason.HEALTH_CHECK_FAILED,
                    f"ECU {target.assignment.ecu_serial}: {problem}; rolled back to slot {slots.active_slot()}",
                    ecu_serial=target.assignment.ecu_serial,
                )
                if not _keeps_successful(targets):
                    raise failures[target.assignment.ecu_serial]
        kept = tuple(t for t in targets if t.assignment.ecu_serial not in failures)
        for target in trial:
            if target in kept:
                self.slots[target.assignment.ecu_serial].commit()
        for target in kept:
            self._installed(target.assignment)
            self._fetcher().discard(target.assignment)
        if failures:
            first = next(iter(failures.values()))
            first.kept = bool(kept)
            raise first

    def undo(self, targets: tuple[Target, ...]) -> None:
        """Back to the committed slot on every ECU this campaign touched; drop its downloads."""
        for target in targets:
            slots = self.slots[target.assignment.ecu_serial]
            with contextlib.suppress(UpdateFailed, OSError):
                if slots.active_slot() != target.slot:
                    slots.rollback()
            self._fetcher().discard(target.assignment)


def make_slots(config: AgentConfig, slots: Mapping[str, SlotBackend] | SlotFactory | None) -> dict[str, SlotBackend]:
    """The slot backends given (a mapping or a factory per ECU), else file-backed slots in the state directory."""
    if slots is None:
        return {
            e.serial: FileSlots.open_or_seed(
                config.state_dir / "slots" / e.serial, e.hardware_id, e.installed_version, durable=config.durable
            )
            for e in config.ecus
        }
    if callable(slots):
        return {e.serial: slots(e) for e in config.ecus}
    missing = {e.serial for e in config.ecus} - set(slots)
    if missing:
        raise ConfigError(f"no slot backend for ECU(s) {sorted(missing)}")
    return dict(slots)


def default_health(config: AgentConfig) -> HealthCheck:
    """The configured health command, else the check that the booted slot's header names the image."""
    if config.health.command:
        return CommandHealthCheck(config.health.command, config.health.timeout)
    return HeaderHealthCheck()


def _fell_back(target: Target, slots: SlotBackend) -> UpdateFailed:
    serial = target.assignment.ecu_serial
    return UpdateFailed(
        FailureReason.BOOT_FAILED,
        f"ECU {serial}: slot {target.slot} did not boot; "
        f"the bootloader fell back to slot {slots.booted_slot()} (rolled back)",
        ecu_serial=serial,
    )


def _keeps_successful(targets: tuple[Target, ...]) -> bool:
    """Whether the recall's signed policy keeps the healthy ECUs on the fix when one fails."""
    return any(t.assignment.ecu_failure_policy == "keep_successful" for t in targets)
