"""Reports and version manifests out: build and sign them, queue manifests, flush the outbox.

Cut here because this is everything the car tells the server, and it is the same whatever step
a campaign is in: the orchestrator decides *that* a record changed (and journals the record
with its report in one write); this module decides *what* the report says, signs it with the
car's key (loaded on first use, so an idle car never imports cryptography), keeps the daily
manifest going and sends the pending manifest and outbox, in order, whenever the link allows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from firmware_bundles.messages import (
    MAX_BATCH_REPORTS,
    MAX_MESSAGE_BYTES,
    FailureReason,
    ManifestReason,
    ReportBatch,
    ReportState,
    StatusReport,
    VersionManifest,
    encode,
)
from vehicle_agent.config import AgentConfig
from vehicle_agent.errors import ConfigError, LinkDown
from vehicle_agent.installer import SlotBackend
from vehicle_agent.journal import CampaignRecord, Journal
from vehicle_agent.link import Link
from vehicle_agent.manifest import ImageMeter, build_manifest

if TYPE_CHECKING:
    from securesystemslib.signer import CryptoSigner

log = logging.getLogger(__name__)
M = TypeVar("M", StatusReport, ReportBatch)

# The car says what it runs at least this often (seconds), even when nothing changed.
MANIFEST_INTERVAL = 24 * 3600.0
# After a manifest could not even be made (e.g. the journal's disk is full): the next try.
MANIFEST_RETRY = 600.0

# Room left in a batch for its envelope (kind, VIN, sent_at, signature) below the message cap.
_BATCH_ENVELOPE_BYTES = 512

_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----\s+([A-Za-z0-9+/=\s]+?)-----END \1PRIVATE KEY-----")


class Reporter:
    """One car's voice: signed status reports, signed manifests (``meter`` measures the slots), the outbox.

    ``journal`` keeps the outbox, the pending manifest and its counter; ``timer`` waits for the
    daily manifest by ``clock``'s time.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        journal: Journal,
        link: Link,
        slots: Mapping[str, SlotBackend],
        clock: Callable[[], datetime],
        manifest_interval: float = MANIFEST_INTERVAL,
        timer: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        linger: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        """``linger`` waits ``config.report_linger_s`` before a batch goes (the agent's campaign sleep)."""
        self._config = config
        self._linger = linger
        self._lingering = False  # :meth:`linger_and_send` runs (for the agent's life)
        self._queued = asyncio.Event()  # a step waits in the outbox for the lingering sender
        self._sending = asyncio.Lock()  # one flush at a time: no step sent twice by two flushes
        self._journal = journal
        self._link = link
        self._slots = slots
        self._clock = clock
        self._manifest_interval = manifest_interval
        self._timer = timer
        self.meter = ImageMeter()
        self._signer_loaded = False
        self._signer_value: CryptoSigner | None = None

    @property
    def _signer(self) -> CryptoSigner | None:
        if not self._signer_loaded:
            self._signer_value = _report_signer(self._config)
            self._signer_loaded = True
        return self._signer_value

    def build(self, record: CampaignRecord) -> StatusReport:
        """The report of ``record``, unsigned: signed when it is sent, alone or in a batch
        (:meth:`flush`); a failure names the ECU that failed (else the first assigned)."""
        installed = self._journal.data.installed
        serial = record.targets[0].assignment.ecu_serial if record.targets else self._config.ecus[0].serial
        if record.reason is not None and record.failed_ecu in installed:
            serial = record.failed_ecu
        report = StatusReport(
            campaign_id=record.campaign_id,
            vin=self._config.vin,
            nonce=record.nonce,
            attempt=record.attempt,
            deferrals=record.deferrals,
            state=record.state,
            reason=record.reason,
            detail=record.detail,
            ecu_serial=serial,
            installed_version=installed[serial][0],
            health_ok=True
            if record.state is ReportState.REMEDIED
            else (False if record.reason is FailureReason.HEALTH_CHECK_FAILED else None),
            sent_at=self._clock(),
        )
        return report

    def _signed(self, message: M) -> M:
        signer = self._signer
        if signer is None or message.signature is not None:  # no key; or a report an older agent signed
            return message
        from firmware_bundles.report_signing import sign_report

        return sign_report(message, signer)

    def _next_message(
        self, outbox: list[StatusReport], manifest: VersionManifest | None
    ) -> tuple[StatusReport | ReportBatch | VersionManifest, list[StatusReport], VersionManifest | None]:
        """The next message, the steps it carries and the pending manifest if it carries that too.

        Without a linger: the pending manifest alone, then each step alone. With one: the steps
        that fit one batch (count and bytes), the pending manifest riding in the same signed
        batch (one message, one signature, one journal write instead of two of each); a lone
        step without a manifest goes as a plain report, a manifest with no step as itself.
        """
        lingering = self._config.report_linger_s > 0
        if manifest is not None and (not outbox or not lingering):
            return manifest, [], manifest
        if not lingering:
            return self._signed(outbox[0]), outbox[:1], None
        room = MAX_MESSAGE_BYTES - _BATCH_ENVELOPE_BYTES
        carried: VersionManifest | None = None
        if manifest is not None:
            carried = manifest if manifest.signature is None else manifest.model_copy(update={"signature": None})
            room -= len(encode(carried)) + len('"manifest":,')
        steps: list[StatusReport] = []
        for report in outbox[:MAX_BATCH_REPORTS]:
            step = report if report.signature is None else report.model_copy(update={"signature": None})
            size = len(encode(step)) + 1
            if steps and size > room:
                break
            room -= size
            steps.append(step)
        if manifest is not None and room < 0:  # the manifest and a step do not fit one message: it goes alone, first
            return manifest, [], manifest
        if len(steps) == 1 and carried is None:
            return self._signed(outbox[0]), outbox[:1], None
        batch = ReportBatch(vin=self._config.vin, reports=tuple(steps), manifest=carried, sent_at=self._clock())
        return self._signed(batch), outbox[: len(steps)], manifest

    async def flush(self) -> None:
        """Send the pending manifest and the outbox in order; stop quietly at the first the link cannot take.

        The manifest goes first, or inside the first batch (the server records a batch's
        manifest after its steps, in the same transaction): after an install it shows the new
        images no later than the report that calls the car remedied. Each message is signed as
        it goes; what it carried leaves the journal only once the link took it (a crash before
        that sends it again: the server counts a step once and a manifest's counter once).
        """
        async with self._sending:
            while True:
                manifest = self._journal.data.manifest
                outbox = list(self._journal.data.outbox)
                if manifest is None and not outbox:
                    return
                message, steps, sent_manifest = self._next_message(outbox, manifest)
                try:
                    await self._link.send(message)
                except LinkDown:
                    return
                self._journal.acknowledge_all(steps, sent_manifest)

    async def flush_soon(self) -> None:
        """A step was journaled: send it after the linger, with the steps that follow it meanwhile
        (:meth:`linger_and_send`), or at once when there is no linger or no lingering sender."""
        if self._lingering and self._config.report_linger_s > 0:
            self._queued.set()
            return
        await self.flush()

    async def linger_and_send(self) -> None:
        """For the agent's life (:meth:`vehicle_agent.agent.Agent.run`, cancelled with it): each time a
        step is queued, wait ``report_linger_s`` and send the outbox, so consecutive steps share a message.
        The steps are journaled before: a power cut meanwhile loses none (the next start sends them)."""
        self._lingering = True
        try:
            while True:
                await self._queued.wait()
                await self._linger(self._config.report_linger_s)
                self._queued.clear()
                await self.flush()
        finally:
            self._lingering = False

    async def send_manifest(self, reason: ManifestReason) -> bool:
        """Make, sign and queue a version manifest (the next counter, saved with it), then send it.

        False when it could not be made; a manifest the link cannot take now stays queued
        and is sent with the next flush, unless a newer one replaces it first.
        """
        try:
            await asyncio.to_thread(self.queue_manifest, reason)
        except Exception:  # the car's campaigns must not fail for want of a manifest
            log.exception("%s: could not make the %s manifest", self._config.vin, reason.value)
            return False
        await self.flush()
        return True

    def queue_manifest(self, reason: ManifestReason) -> None:
        now = self._clock()
        manifest = build_manifest(
            vin=self._config.vin,
            counter=self._journal.next_manifest_counter(),
            reason=reason,
            ecus=self._config.ecus,
            slots=self._slots,
            journal=self._journal.data,
            meter=self.meter,
            sent_at=now,
        )
        signer = self._signer
        if signer is not None:
            from firmware_bundles.report_signing import sign_report

            manifest = sign_report(manifest, signer)
        self._journal.queue_manifest(manifest, now.isoformat())

    def try_queue_manifest(self, reason: ManifestReason) -> None:
        try:
            self.queue_manifest(reason)
        except Exception:  # the install stands: the next manifest (daily at the latest) tells it
            log.exception("%s: could not make the %s manifest", self._config.vin, reason.value)

    async def daily_manifests(self) -> None:
        """At least one manifest a day, counted from the last one made for any reason."""
        while True:
            wait = self._manifest_due_in()
            if wait > 0:
                await self._timer(min(wait, self._manifest_interval))
            elif not await self.send_manifest(ManifestReason.DAILY):
                await self._timer(min(MANIFEST_RETRY, self._manifest_interval))

    def _manifest_due_in(self) -> float:
        last = self._journal.data.manifest_at
        try:
            made = datetime.fromisoformat(last)
        except ValueError:
            return 0.0
        return self._manifest_interval - (self._clock() - made).total_seconds()

    def status(self) -> dict[str, object]:
        """What the car holds now, for the CLI: installed images, campaigns, outbox, manifest, slots."""
        data = self._journal.data
        return {
            "vin": self._config.vin,
            "installed": {k: {"version": v, "release_counter": c} for k, (v, c) in data.installed.items()},
            "campaigns": {k: v.to_json() for k, v in data.campaigns.items()},
            "outbox": len(data.outbox),
            "manifest": {
                "counter": data.manifest_counter,
                "made_at": data.manifest_at or None,
                "undelivered": data.manifest is not None,
            },
            "slots": {serial: slots.describe() for serial, slots in self._slots.items()},
        }


def check_report_key(config: AgentConfig) -> None:
    """Fail at start on a key that is not a PEM private key; it is parsed at the first report."""
    if config.report_key is None:
        return
    match = _PEM_KEY.search(config.report_key)
    try:
        if match is None or not base64.b64decode(b"".join(match.group(2).split()), validate=True):
            raise ValueError("no PEM private key block")
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"report key: not a usable private key: {exc}") from exc


def _report_signer(config: AgentConfig) -> CryptoSigner | None:
    """The car's report key; without one, reports go unsigned (and the server rejects them)."""
    if config.report_key is None:
        log.warning("%s: no report key configured; the server will reject this car's reports", config.vin)
        return None
    from firmware_bundles.report_signing import load_report_signer

    try:
        return load_report_signer(config.report_key)
    except ValueError as exc:
        raise ConfigError(f"report key: {exc}") from exc
