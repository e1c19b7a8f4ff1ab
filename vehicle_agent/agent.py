"""The one orchestrator: notice in, verified install, reports out, state saved before each step.

Steps and what each does (the journal records a step before its work starts, so a
restart redoes exactly that step):

* ``notified``: the notice was accepted (a hint only; nothing trusted yet);
* ``downloading``: refresh and verify Director and Image metadata, check they agree,
  stream each assigned bundle with its signed length and sha256 checked;
* ``verifying``: the bundle's manifest matches the signed assignment and its image hash;
* ``installing``: write the spare slot, read it back, arm a one-shot try boot;
* ``rebooting``: boot the tried slot, health-check it, commit (or roll back); each start
  of this step is counted in the journal first, and past ``installer.max_boot_attempts``
  the agent gives up and rolls back, so a crash or reboot loop ends;
* ``remedied`` / ``failed``: terminal; a repeated notice re-sends this report only.

Blocking work runs in ``asyncio.to_thread`` so one event loop can host thousands of agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from securesystemslib.signer import CryptoSigner

from firmware_bundles.messages import CampaignNotice, FailureReason, ReportState, StatusReport
from firmware_bundles.report_signing import load_report_signer, sign_report
from firmware_bundles.uptane import Assignment
from vehicle_agent.config import AgentConfig, EcuConfig
from vehicle_agent.delta import DeltaApplier, rebuilt_image
from vehicle_agent.errors import ConfigError, LinkDown, UpdateFailed
from vehicle_agent.fetcher import BundleFetcher
from vehicle_agent.health import CommandHealthCheck, HeaderHealthCheck, HealthCheck
from vehicle_agent.installer import FileSlots, SlotBackend, check_bundle, install, install_image
from vehicle_agent.journal import CampaignRecord, Journal, Target
from vehicle_agent.link import Link
from vehicle_agent.transport import Transport
from vehicle_agent.verifier import Verifier

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
ReportCallback = Callable[[StatusReport], None]
SlotFactory = Callable[[EcuConfig], SlotBackend]
T = TypeVar("T")

# Worth another try before reporting failed: the network, not the content, let us down.
RETRYABLE = frozenset({FailureReason.METADATA_FETCH_FAILED, FailureReason.DOWNLOAD_FAILED})
S = ReportState


def utc_now() -> datetime:
    return datetime.now(UTC)


class Agent:
    """One car. Inject the link, transport, slots and health check; the simulator fakes the hardware."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        link: Link,
        transport: Transport,
        slots: Mapping[str, SlotBackend] | SlotFactory | None = None,
        health: HealthCheck | None = None,
        clock: Clock = utc_now,
        on_report: ReportCallback | None = None,
        retries: int = 2,
        retry_delay: float = 5.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        download_sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._link = link
        self._clock = clock
        self._on_report = on_report
        self._retries = retries
        self._retry_delay = retry_delay
        self._sleep = sleep
        self.slots = self._make_slots(slots)
        link.on_connect = self.flush  # re-send the outbox whenever the link comes back
        self._health = health or self._default_health()
        self._verifier = Verifier(config, transport)
        self._signer = _report_signer(config)
        self._fetcher = BundleFetcher(
            transport,
            config.repo_url,
            config.state_dir / "downloads",
            limits=config.download,
            monotonic=monotonic,
            sleep=download_sleep,
        )
        self._deltas = DeltaApplier(self._fetcher, max_image_bytes=config.download.max_delta_image_bytes)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.journal = Journal(config.state_dir / "journal.json", durable=config.durable)
        except ValueError as exc:
            raise ConfigError(f"journal unreadable: {exc}") from exc
        for ecu in config.ecus:
            if ecu.serial not in self.journal.data.installed:
                self.journal.data.installed[ecu.serial] = (ecu.installed_version, 0)

    def _make_slots(self, slots: Mapping[str, SlotBackend] | SlotFactory | None) -> dict[str, SlotBackend]:
        cfg = self.config
        if slots is None:
            return {
                e.serial: FileSlots.open_or_seed(
                    cfg.state_dir / "slots" / e.serial, e.hardware_id, e.installed_version, durable=cfg.durable
                )
                for e in cfg.ecus
            }
        if callable(slots):
            return {e.serial: slots(e) for e in cfg.ecus}
        missing = {e.serial for e in cfg.ecus} - set(slots)
        if missing:
            raise ConfigError(f"no slot backend for ECU(s) {sorted(missing)}")
        return dict(slots)

    def _default_health(self) -> HealthCheck:
        if self.config.health.command:
            return CommandHealthCheck(self.config.health.command, self.config.health.timeout)
        return HeaderHealthCheck()

    # -- the outside world ---------------------------------------------------------

    async def run(self) -> None:
        """Resume what the journal left unfinished, then handle notices until the link ends."""
        await self.flush()
        await self.resume()
        notices = self._link.notices()
        try:
            async for notice in notices:
                try:
                    await self.handle(notice)
                except Exception:  # e.g. the journal's disk is full: keep listening, resume later
                    log.exception("%s: campaign %s interrupted", self.config.vin, notice.campaign_id)
        finally:
            await notices.aclose()

    async def resume(self) -> list[ReportState]:
        """Finish every campaign the journal holds unfinished (after a restart)."""
        await asyncio.to_thread(self._settle_boot)
        return [await self._drive(record) for record in self.journal.unfinished()]

    def _settle_boot(self) -> None:
        """A trial boot or armed try that no unfinished campaign owns (e.g. the power went
        while rolling back) goes back to the committed slot."""
        owned = {t.assignment.ecu_serial for c in self.journal.unfinished() for t in c.targets}
        for serial, slots in self.slots.items():
            if serial in owned:
                continue
            with contextlib.suppress(UpdateFailed, OSError):
                if slots.booted_slot() != slots.active_slot() or slots.pending_try() is not None:
                    log.warning("%s: ECU %s has an unowned trial boot; rolling back", self.config.vin, serial)
                    slots.rollback()

    async def handle(self, notice: CampaignNotice) -> ReportState:
        """Take one notice to a terminal state and return it."""
        await self.flush()
        record = self.journal.campaign(notice.campaign_id)
        if record is None:
            record = CampaignRecord(notice.campaign_id, notice.nonce, S.NOTIFIED)
            await self._enter(record)
        elif record.state.terminal:
            if record.nonce == notice.nonce or record.state is S.REMEDIED:
                # Already done: say so again (with the nonce the server expects now).
                record = replace(record, nonce=notice.nonce)
                self.journal.record(record)
                await self._report(record)
                return record.state
            record = CampaignRecord(notice.campaign_id, notice.nonce, S.NOTIFIED, attempt=record.attempt + 1)
            await self._enter(record)
        elif record.nonce != notice.nonce:
            record = replace(record, nonce=notice.nonce)
            self.journal.record(record)
        return await self._drive(record)

    async def flush(self) -> None:
        """Send the outbox in order; stop quietly at the first report the link cannot take."""
        for report in list(self.journal.data.outbox):
            try:
                await self._link.send(report)
            except LinkDown:
                return
            self.journal.acknowledge(report)

    def status(self) -> dict[str, object]:
        return {
            "vin": self.config.vin,
            "installed": {k: {"version": v, "release_counter": c} for k, (v, c) in self.journal.data.installed.items()},
            "campaigns": {k: v.to_json() for k, v in self.journal.data.campaigns.items()},
            "outbox": len(self.journal.data.outbox),
            "slots": {serial: slots.describe() for serial, slots in self.slots.items()},
        }

    # -- the pipeline ----------------------------------------------------------------

    async def _enter(self, record: CampaignRecord) -> None:
        """Journal first (with its report, one write), then tell the server: after a crash
        we redo the step, never skip it, and a terminal state always has its report queued."""
        await self._report(record)

    async def _drive(self, record: CampaignRecord) -> ReportState:
        while not record.state.terminal:
            try:
                record = await self._step(record)
            except UpdateFailed as exc:
                record = await self._fail(record, exc)
                break
            await self._enter(record)
        return record.state

    async def _step(self, record: CampaignRecord) -> CampaignRecord:
        """Do the work of ``record.state``; return the record of the next step."""
        if record.state is S.NOTIFIED:
            return record.advance(S.DOWNLOADING, targets=())
        if record.state is S.DOWNLOADING:
            targets = await self._blocking(self._download)
            if not targets:
                return record.advance(S.REMEDIED, targets=())
            return record.advance(S.VERIFYING, targets=targets)
        if record.state is S.VERIFYING:
            await self._blocking(self._verify_bundles, record.targets)
            return record.advance(S.INSTALLING)
        if record.state is S.INSTALLING:
            return record.advance(S.REBOOTING, targets=await self._blocking(self._install, record.targets))
        if record.state is S.REBOOTING:
            record = record.advance(S.REBOOTING, boot_attempts=record.boot_attempts + 1)
            self.journal.record(record)  # counted before the attempt, so a crash loop here still ends
            limit = self.config.installer.max_boot_attempts
            if record.boot_attempts > limit:
                raise UpdateFailed(
                    FailureReason.BOOT_FAILED, f"no healthy boot after {limit} boot attempts; rolled back"
                )
            await self._blocking(self._reboot_and_commit, record.targets)
            return record.advance(S.REMEDIED)
        raise AssertionError(f"no step for {record.state}")

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a thread, retrying network failures, mapping surprises to internal_error."""
        for attempt in range(self._retries + 1):
            try:
                return await asyncio.to_thread(fn, *args)
            except UpdateFailed as exc:
                if exc.reason not in RETRYABLE or attempt == self._retries:
                    raise
                log.info("%s: %s; retrying", self.config.vin, exc)
            except Exception as exc:  # a disk error or a bug must fail the campaign, not the car
                log.exception("%s: unexpected error", self.config.vin)
                raise UpdateFailed(FailureReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}") from exc
            await self._sleep(self._retry_delay * 2**attempt)
        raise AssertionError("unreachable")

    def _download(self) -> tuple[Target, ...]:
        verified = self._verifier.verify()
        todo = [a for a in verified.assignments if self._needs_install(a)]
        for assignment in todo:
            slots = self.slots[assignment.ecu_serial]
            delta = verified.image_repo and self._deltas.try_delta(assignment, verified.image_repo, slots)
            if not delta:
                self._fetcher.fetch(assignment)
        return tuple(Target(a) for a in todo)

    def _needs_install(self, assignment: Assignment) -> bool:
        version, counter = self.journal.data.installed[assignment.ecu_serial]
        if assignment.release_counter < counter:
            raise UpdateFailed(
                FailureReason.METADATA_ROLLBACK,
                f"{assignment.path}: release counter {assignment.release_counter} is below installed {counter}",
            )
        return assignment.version != version

    def _verify_bundles(self, targets: tuple[Target, ...]) -> None:
        for target in targets:
            if rebuilt_image(self._fetcher.downloads, target.assignment) is None:  # a delta's image is checked there
                check_bundle(self._fetcher.fetch(target.assignment), target.assignment)

    def _install(self, targets: tuple[Target, ...]) -> tuple[Target, ...]:
        done = []
        for target in targets:
            slots = self.slots[target.assignment.ecu_serial]
            if slots.booted_slot() != slots.active_slot():
                slots.rollback()  # a trial boot we did not start: back to the committed slot first
            image = rebuilt_image(self._fetcher.downloads, target.assignment)
            if image is not None:
                slot = install_image(image, target.assignment, slots)
            else:
                slot = install(self._fetcher.fetch(target.assignment), target.assignment, slots)
            done.append(Target(target.assignment, slot))
        return tuple(done)

    def _reboot_and_commit(self, targets: tuple[Target, ...]) -> None:
        for target in targets:
            slots = self.slots[target.assignment.ecu_serial]
            if slots.booted_slot() != target.slot:
                if slots.pending_try() != target.slot:  # the one-shot try was spent and we are back
                    raise UpdateFailed(FailureReason.BOOT_FAILED, _fell_back(target, slots))
                slots.reboot()
            if slots.booted_slot() != target.slot:
                raise UpdateFailed(FailureReason.BOOT_FAILED, _fell_back(target, slots))
        for target in targets:
            slots = self.slots[target.assignment.ecu_serial]
            problem = self._health.check(slots, target.assignment)
            if problem is not None:
                raise UpdateFailed(
                    FailureReason.HEALTH_CHECK_FAILED,
                    f"ECU {target.assignment.ecu_serial}: {problem}; rolled back to slot {slots.active_slot()}",
                )
        for target in targets:
            a = target.assignment
            self.slots[a.ecu_serial].commit()
            self.journal.set_installed(a.ecu_serial, a.version, a.release_counter)
            self._fetcher.discard(a)

    async def _fail(self, record: CampaignRecord, exc: UpdateFailed) -> CampaignRecord:
        log.warning("%s: campaign %s failed: %s", self.config.vin, record.campaign_id, exc)
        failed = record.advance(S.FAILED, reason=exc.reason, detail=exc.detail)
        # Journaled before the rollback: on a Pi rolling back is a reboot. The report goes after it.
        report = self._build_report(failed)
        self.journal.record(failed, report)
        await asyncio.to_thread(self._undo, record.targets)
        if self._on_report is not None:
            self._on_report(report)
        await self.flush()
        return failed

    def _undo(self, targets: tuple[Target, ...]) -> None:
        """Back to the committed slot on every ECU this campaign touched; drop its downloads."""
        for target in targets:
            slots = self.slots[target.assignment.ecu_serial]
            with contextlib.suppress(UpdateFailed, OSError):
                if slots.active_slot() != target.slot:
                    slots.rollback()
            self._fetcher.discard(target.assignment)

    # -- reports -----------------------------------------------------------------------

    def _build_report(self, record: CampaignRecord) -> StatusReport:
        serial = record.targets[0].assignment.ecu_serial if record.targets else self.config.ecus[0].serial
        report = StatusReport(
            campaign_id=record.campaign_id,
            vin=self.config.vin,
            nonce=record.nonce,
            attempt=record.attempt,
            state=record.state,
            reason=record.reason,
            detail=record.detail,
            ecu_serial=serial,
            installed_version=self.journal.data.installed[serial][0],
            health_ok=True
            if record.state is S.REMEDIED
            else (False if record.reason is FailureReason.HEALTH_CHECK_FAILED else None),
            sent_at=self._clock(),
        )
        return report if self._signer is None else sign_report(report, self._signer)

    async def _report(self, record: CampaignRecord) -> None:
        report = self._build_report(record)
        self.journal.record(record, report)
        if self._on_report is not None:
            self._on_report(report)
        await self.flush()


def _report_signer(config: AgentConfig) -> CryptoSigner | None:
    """The car's report key; without one, reports go unsigned (and the server rejects them)."""
    if config.report_key is None:
        log.warning("%s: no report key configured; the server will reject this car's reports", config.vin)
        return None
    try:
        return load_report_signer(config.report_key)
    except ValueError as exc:
        raise ConfigError(f"report key: {exc}") from exc


def _fell_back(target: Target, slots: SlotBackend) -> str:
    return f"slot {target.slot} did not boot; the bootloader fell back to slot {slots.booted_slot()} (rolled back)"


def agent_state_dir(base: Path, vin: str) -> Path:
    """Where the simulator keeps one car's state under a fleet directory."""
    return base / vin
