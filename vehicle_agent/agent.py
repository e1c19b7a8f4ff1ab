"""The one orchestrator: notice in, verified install, reports out, state saved before each step.

Steps and what each does (the journal records a step before its work starts, so a
restart redoes exactly that step):

* ``notified``: the notice was accepted (a hint only; nothing trusted yet); the gate
  (:mod:`vehicle_agent.gate`) shows the owner's notice, asks consent for a non-safety
  update that needs it (after verifying the metadata: the owner answers for the exact
  images it names, :mod:`vehicle_agent.consent`) and checks the preconditions;
* ``consented`` / ``deferred``: the owner said yes / a precondition (or the owner) holds
  the car; the gate looks again after a jittered interval or a vehicle-state change;
* ``downloading`` (:mod:`vehicle_agent.download_step`): refresh and verify Director and
  Image metadata, check they agree, check they still name the images the owner consented
  to (else ask again), check the network rule now that the signed size is known, then
  stream each assigned bundle with its signed length and sha256 checked;
* ``verifying``: the bundle's manifest matches the signed assignment and its image hash;
* ``installing`` (:mod:`vehicle_agent.install_step`): the targets are the consented images
  (checked again); write the spare slot, read it back, arm a one-shot try boot;
* ``rebooting`` (the same module): boot the tried slot, health-check it, commit (or roll back); each start
  of this step is counted in the journal first, and past ``installer.max_boot_attempts``
  the agent gives up and rolls back, so a crash or reboot loop ends (a slot already
  committed is not on trial: it is recorded installed and reported remedied);
* ``remedied`` / ``failed`` / ``rolled_back`` (a failed trial boot or health check) /
  ``declined`` / ``withdrawn``: terminal; a repeated notice re-sends this report only,
  and a new nonce after anything but ``remedied`` starts the next attempt.

The agent owns the journal and every campaign record's move; the steps do the work, reports
and manifests are made and sent by :mod:`vehicle_agent.reporting`, and blocking work runs in a
thread through :mod:`vehicle_agent.retrying` so one event loop can host thousands of agents.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware_bundles.assignment import Assignment
from firmware_bundles.consent import images_key
from firmware_bundles.messages import (
    CampaignNotice,
    CampaignWithdrawal,
    FailureReason,
    ManifestReason,
    ReportState,
    StatusReport,
)
from vehicle_agent.config import AgentConfig
from vehicle_agent.consent import Offer, covers, default_owner
from vehicle_agent.download_step import DownloadStep
from vehicle_agent.errors import ConfigError, UpdateFailed
from vehicle_agent.gate import (
    ConsentOutdated,
    HeldAtDownload,
    NoticeReader,
    StartGate,
    Withdrawn,
    defer,
    needs_consent,
    outdated,
    outside_window,
    owes_result,
    preconditions_of,
    stored,
)
from vehicle_agent.health import HealthCheck
from vehicle_agent.install_step import InstallStep, SlotFactory
from vehicle_agent.installer import SlotBackend
from vehicle_agent.journal import CampaignRecord, InstalledTarget, Journal
from vehicle_agent.link import Link
from vehicle_agent.owner import OwnerHook
from vehicle_agent.reporting import MANIFEST_INTERVAL, Reporter, check_report_key
from vehicle_agent.retrying import Retrying
from vehicle_agent.vehicle import VehicleState, vehicle_state

if TYPE_CHECKING:
    from vehicle_agent.transport import Transport
    from vehicle_agent.verifier import Carried

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
ReportCallback = Callable[[StatusReport], None]

# After a trial boot these leave the old slot running: reported as rolled_back, reason kept.
ROLLBACK_REASONS = frozenset({FailureReason.BOOT_FAILED, FailureReason.HEALTH_CHECK_FAILED})
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
        vehicle: VehicleState | None = None,
        owner: OwnerHook | None = None,
        rng: random.Random | None = None,
        manifest_interval: float = MANIFEST_INTERVAL,
        timer: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        """``timer`` waits for the daily manifest (by ``clock``'s time); ``sleep`` is the campaign's waits."""
        self.config = config
        self._link = link
        self._clock = clock
        self._on_report = on_report
        self._notices = NoticeReader()  # the attempt's notice, parsed once for all its steps
        self._sleep = sleep
        self._retrying = Retrying(
            config.vin,
            config.download,
            retries=retries,
            retry_delay=retry_delay,
            rng=rng or random.Random(),
            sleep=sleep,
            monotonic=monotonic,
        )
        self._blocking = self._retrying.blocking  # every blocking step: in a thread, network failures retried
        self._installing = InstallStep(
            config, slots, health, fetcher=lambda: self._downloads.fetcher, installed=self._record_installed
        )
        self.slots = self._installing.slots  # read by the manifest and status; only the install step changes them
        link.on_connect = self.flush  # re-send the outbox whenever the link comes back
        check_report_key(config)
        options = config.vehicle
        vehicle = vehicle or vehicle_state(options)
        self.gate = StartGate(
            vehicle,
            owner or default_owner(config, clock),
            clock=clock,
            sleep=sleep,
            interval=options.retry_interval,
            jitter=options.retry_jitter,
            rng=rng,
            offer=self._offer,
            stale_delay=self._retrying.stale_delay,
        )
        self._active: int | None = None  # the campaign being driven (one at a time)
        self._withdrawals: set[int] = set()  # withdrawals the active campaign has yet to act on
        self._carried: dict[int, Carried] = {}  # signed metadata files a notice carried, used once
        config.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.journal = Journal(config.state_dir / "journal.json", durable=config.durable)
        except ValueError as exc:
            raise ConfigError(f"journal unreadable: {exc}") from exc
        for ecu in config.ecus:
            if ecu.serial not in self.journal.data.installed:
                self.journal.data.installed[ecu.serial] = (ecu.installed_version, 0)
        self._reports = Reporter(
            config,
            journal=self.journal,
            link=link,
            slots=self.slots,
            clock=clock,
            manifest_interval=manifest_interval,
            timer=timer,
            linger=sleep,
        )
        self.meter = self._reports.meter
        # The verifying, downloading and signing stack (python-tuf, httpx, cryptography) is
        # built on first use: an idle car then holds only its MQTT link and journal.
        self._downloads = DownloadStep(
            config,
            transport,
            journal=self.journal,
            slots=self.slots,
            vehicle=vehicle,
            carried=self._take_carried,
            monotonic=monotonic,
            download_sleep=download_sleep,
        )

    def _record_installed(self, a: Assignment) -> None:
        self.journal.set_installed(
            a.ecu_serial, a.version, a.release_counter, InstalledTarget(a.path, a.sha256, a.length)
        )

    # -- the outside world ---------------------------------------------------------

    async def run(self) -> None:
        """Resume what the journal left unfinished, then handle notices until the link ends.

        Campaigns run one at a time in a worker, in arrival order; the link keeps being
        read meanwhile, so a withdrawal reaches a campaign that waits (deferred, or for
        the owner's consent) or is between steps.
        """
        await self.flush()
        await self.send_manifest(ManifestReason.START)
        queue: asyncio.Queue[CampaignNotice | None] = asyncio.Queue()
        worker = asyncio.create_task(self._work(queue))
        daily = asyncio.create_task(self._reports.daily_manifests())
        sender = asyncio.create_task(self._reports.linger_and_send())
        messages = self._link.notices()
        try:
            async for message in messages:
                if isinstance(message, CampaignWithdrawal):
                    await self.withdraw(message)
                else:
                    queue.put_nowait(message)
            queue.put_nowait(None)
            await worker
        finally:
            worker.cancel()
            daily.cancel()
            sender.cancel()  # steps it had yet to send stay in the journal's outbox: sent at the next start
            await asyncio.gather(worker, daily, sender, return_exceptions=True)
            await messages.aclose()

    async def _work(self, queue: asyncio.Queue[CampaignNotice | None]) -> None:
        try:
            await self.resume()
        except Exception:  # e.g. the journal's disk is full: keep listening, resume later
            log.exception("%s: resuming interrupted", self.config.vin)
        while (notice := await queue.get()) is not None:
            try:
                await self.handle(notice)
            except Exception:
                log.exception("%s: campaign %s interrupted", self.config.vin, notice.campaign_id)

    async def resume(self) -> list[ReportState]:
        """Finish every campaign the journal holds unfinished (after a restart)."""
        await asyncio.to_thread(self._settle_boot)
        for record in list(self.journal.data.campaigns.values()):
            if owes_result(record):  # the power went between the end and telling the owner
                await self._tell_result(record)
        return [await self._drive(record) for record in self.journal.unfinished()]

    async def withdraw(self, message: CampaignWithdrawal) -> ReportState | None:
        """The server cancelled a campaign for this car: stop it if it has not started installing.

        Ignored (None) for a finished campaign, or a nonce that is not the campaign's current
        one; a car already installing or rebooting finishes (or rolls back) and reports as usual.
        For a campaign it has no notice of yet, the withdrawal is journaled: its notice, if it
        comes after, is answered ``withdrawn`` and never shown or acted on.
        """
        record = self.journal.campaign(message.campaign_id)
        if record is None:
            # Before its notice: a car offline meanwhile gets the retained withdrawal first and the notice it
            # replaced may still be queued for it. Journaled, so that notice (same nonce) is not acted on.
            log.info("%s: campaign %s withdrawn before its notice arrived", self.config.vin, message.campaign_id)
            self.journal.record(CampaignRecord(message.campaign_id, message.nonce, S.WITHDRAWN))
            return None
        if record.state.terminal or record.nonce != message.nonce:
            log.info("%s: ignored a withdrawal of campaign %s", self.config.vin, message.campaign_id)
            return None
        if record.state.rank >= S.INSTALLING.rank:
            log.info("%s: campaign %s withdrawn while %s: finishing", self.config.vin, record.campaign_id, record.state)
            return record.state
        if self._active == record.campaign_id:
            self._withdrawals.add(record.campaign_id)  # acted on at the next step boundary or wake-up
            self.gate.poke()
            return S.WITHDRAWN
        done = await self._withdrawn(record)
        if owes_result(done):
            await self._tell_result(done)
        return done.state

    def _settle_boot(self) -> None:
        self._installing.settle({t.assignment.ecu_serial for c in self.journal.unfinished() for t in c.targets})

    async def handle(self, notice: CampaignNotice) -> ReportState:
        """Take one notice to a terminal state and return it."""
        await self.flush()
        record = self.journal.campaign(notice.campaign_id)
        if record is None:
            record = CampaignRecord(notice.campaign_id, notice.nonce, S.NOTIFIED, notice=stored(notice))
            await self._enter(record)
        elif record.state.terminal:
            if record.nonce == notice.nonce or record.state is S.REMEDIED:
                # Already done: say so again (with the nonce the server expects now).
                record = replace(record, nonce=notice.nonce)
                self.journal.record(record)
                await self._report(record)
                return record.state
            record = CampaignRecord(
                notice.campaign_id, notice.nonce, S.NOTIFIED, attempt=record.attempt + 1, notice=stored(notice)
            )
            await self._enter(record)
        elif record.nonce != notice.nonce:
            record = replace(record, nonce=notice.nonce, notice=stored(notice))
            self.journal.record(record)
        if notice.director_metadata is not None or notice.image_metadata is not None:
            from vehicle_agent.verifier import Carried  # python-tuf loads only once a notice comes

            self._carried[notice.campaign_id] = Carried(notice.director_metadata, notice.image_metadata)
        return await self._drive(record)

    async def flush(self) -> None:
        """Send the pending manifest, then the outbox in order, as far as the link takes them."""
        await self._reports.flush()

    async def send_manifest(self, reason: ManifestReason) -> bool:
        """Make, sign, queue and send a version manifest; False when it could not be made."""
        return await self._reports.send_manifest(reason)

    def status(self) -> dict[str, object]:
        """What the car holds now (installed images, campaigns, outbox, manifest, slots), for the CLI."""
        return self._reports.status()

    # -- the pipeline ----------------------------------------------------------------

    async def _enter(self, record: CampaignRecord) -> None:
        """Journal first (with its report, one write), then tell the server: after a crash
        we redo the step, never skip it, and a terminal state always has its report queued."""
        await self._report(record)

    async def _drive(self, record: CampaignRecord) -> ReportState:
        record = self.journal.campaign(record.campaign_id) or record  # it may have been withdrawn meanwhile
        self._active = record.campaign_id
        try:
            while not record.state.terminal:
                if self._withdrawal_due(record):
                    record = await self._withdrawn(record)
                    break
                try:
                    nxt = await self._step(record)
                except UpdateFailed as exc:
                    record = await self._fail(record, exc)
                    break
                except Withdrawn:
                    record = await self._withdrawn(record)
                    break
                if not nxt.state.terminal and self._withdrawal_due(record):
                    record = await self._withdrawn(record)
                    break
                record = nxt
                await self._enter(record)
        finally:
            self._active = None
            self._withdrawals.discard(record.campaign_id)
        if owes_result(record):
            await self._tell_result(record)
        return record.state

    def _withdrawal_due(self, record: CampaignRecord) -> bool:
        return record.campaign_id in self._withdrawals and record.state.rank < S.INSTALLING.rank

    async def _withdrawn(self, record: CampaignRecord) -> CampaignRecord:
        """Stop before installing: drop what was downloaded, report withdrawn (one journal write first)."""
        alone = self._active in (None, record.campaign_id)  # no other campaign's download to keep
        self._downloads.discard(record.targets, everything=alone)
        done = record.advance(S.WITHDRAWN, detail="the campaign was withdrawn before this car started installing")
        await self._report(done)
        return done

    async def _tell_result(self, record: CampaignRecord) -> None:
        """The owner's notice after (success or not), logged in the journal once shown."""
        notice = self._notices.of(record)
        if notice is not None:
            await self.gate.owner.show_result(notice, record.state, record.detail)
        self.journal.record(self.gate.log(record, "result", f"{record.state.value} {record.detail}".strip()))

    async def _step(self, record: CampaignRecord) -> CampaignRecord:
        """Do the work of ``record.state``; return the record of the next step."""
        withdrawn = lambda: record.campaign_id in self._withdrawals  # noqa: E731
        if record.state in (S.NOTIFIED, S.CONSENTED, S.DEFERRED):
            try:  # asking consent verifies the metadata first: it may find it expired too
                if record.state is S.DEFERRED:
                    return await self.gate.wait(record, self._notices.of(record), withdrawn)
                return await self.gate.start(record, self._notices.of(record), withdrawn)
            except UpdateFailed as exc:
                return self._stale(record, exc)
        if record.state is S.DOWNLOADING:
            notice = self._notices.of(record)  # the network rule needs the signed size: checked in download
            consented = record.consent_images if needs_consent(notice) else None
            try:
                targets, window = await self._blocking(self._downloads.download, preconditions_of(notice), consented)
            except HeldAtDownload as held:  # e.g. a large bundle and only cellular
                return defer(record, held.hold, bundle_bytes=held.bundle_bytes, stale_tries=0)
            except ConsentOutdated as changed:  # a new assignment since the owner's yes
                return outdated(record, changed)
            except UpdateFailed as exc:
                return self._stale(record, exc)
            if not targets:
                return record.advance(S.REMEDIED, targets=(), stale_tries=0)
            return record.advance(S.VERIFYING, targets=targets, window=window, stale_tries=0)
        if record.state is S.VERIFYING:
            await self._blocking(self._downloads.verify_bundles, record.targets)
            closed = outside_window(record, self._clock())  # downloaded at any hour, installed only inside
            if closed is not None:
                return defer(record, closed)
            return record.advance(S.INSTALLING)
        if record.state is S.INSTALLING:
            if needs_consent(self._notices.of(record)):  # only the images the owner said yes to
                hashes = [t.assignment.sha256 for t in record.targets]
                if not covers(record.consent_images, hashes):
                    self._downloads.discard(record.targets, everything=False)
                    return outdated(record, ConsentOutdated(record.consent_images, images_key(hashes)))
            return record.advance(S.REBOOTING, targets=await self._blocking(self._installing.install, record.targets))
        if record.state is S.REBOOTING:
            record = record.advance(S.REBOOTING, boot_attempts=record.boot_attempts + 1)
            self.journal.record(record)  # counted before the attempt, so a crash loop here still ends
            limit = self.config.installer.max_boot_attempts
            if record.boot_attempts > limit and await self._blocking(self._installing.on_trial, record.targets):
                raise UpdateFailed(
                    FailureReason.BOOT_FAILED, f"no healthy boot after {limit} boot attempts; rolled back"
                )
            await self._blocking(self._installing.reboot_and_commit, record.targets)
            if record.targets:  # sent with the remedied report, ahead of it
                await asyncio.to_thread(self._reports.try_queue_manifest, ManifestReason.INSTALL)
            return record.advance(S.REMEDIED)
        raise AssertionError(f"no step for {record.state}")

    def _stale(self, record: CampaignRecord, exc: UpdateFailed) -> CampaignRecord:
        """Deferred while fresh metadata may still come (``exc`` found it expired), else ``exc`` raised."""
        stale = self._retrying.stale_hold(record, exc)
        if stale is None:
            raise exc
        return defer(record, stale, stale_tries=record.stale_tries + 1)

    async def _offer(self) -> Offer:
        """The gate's question: what the verified metadata assigns (and any signed owner-page answer)."""
        verified = await self._blocking(self._downloads.verifier.verify, self._take_carried())
        return Offer.of(verified.assignments, verified.consent, verified.consent_problem)

    def _take_carried(self) -> Carried | None:
        """The active campaign's carried metadata files, once: a later refresh fetches."""
        return self._carried.pop(self._active, None) if self._active is not None else None

    async def _fail(self, record: CampaignRecord, exc: UpdateFailed) -> CampaignRecord:
        log.warning("%s: campaign %s failed: %s", self.config.vin, record.campaign_id, exc)
        # keep_successful: the other ECUs kept the fix, so the car is failed, not rolled back
        rolled_back = record.state is S.REBOOTING and exc.reason in ROLLBACK_REASONS and not exc.kept
        failed = record.advance(
            S.ROLLED_BACK if rolled_back else S.FAILED,
            reason=exc.reason,
            detail=exc.detail,
            failed_ecu=exc.ecu_serial or "",
        )
        # Journaled before the rollback: on a Pi rolling back is a reboot. The report goes after it.
        report = self._reports.build(failed)
        self.journal.record(failed, report)
        await asyncio.to_thread(self._installing.undo, record.targets)
        if record.state.rank >= S.INSTALLING.rank and record.targets:  # slots were touched: say what runs now
            await asyncio.to_thread(self._reports.try_queue_manifest, ManifestReason.ROLLBACK)
        if self._on_report is not None:
            self._on_report(report)
        await self._reports.flush_soon()
        return failed

    async def _report(self, record: CampaignRecord) -> None:
        """Journal the step with its report (one write), then send it with the steps that follow
        within the linger (:meth:`Reporter.flush_soon`)."""
        report = self._reports.build(record)
        self.journal.record(record, report)
        if self._on_report is not None:
            self._on_report(report)
        await self._reports.flush_soon()


def agent_state_dir(base: Path, vin: str) -> Path:
    """Where the simulator keeps one car's state under a fleet directory."""
    return base / vin


__all__ = ["Agent", "agent_state_dir", "default_owner", "utc_now", "vehicle_state"]
