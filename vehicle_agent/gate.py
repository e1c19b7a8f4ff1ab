"""Before a campaign starts: the owner's notice and consent, and the campaign's preconditions.

:func:`check` says which precondition blocks, if any. :class:`StartGate` takes a
campaign from ``notified``, ``consented`` or ``deferred`` to its next step: show the
notice (once per attempt), ask consent (non-safety updates that require it: only after
the signed metadata is verified, showing the exact images it names, see
:mod:`vehicle_agent.consent`), check the preconditions, and while deferred wait the retry
interval (with jitter) or until the vehicle state changes. A deferred report carries
``<code>: <text>`` as its detail, so the server can count deferrals by reason without
parsing prose. Nothing here touches the slots: a car held at the gate never installs anything.

Two holds come from the signed metadata rather than the car: ``outside_window`` (the
Director signed a maintenance window in the car's local time and it is closed: the gate
sleeps until it opens, see :mod:`firmware_bundles.window`) and ``metadata_expired`` (what
the repositories served had lapsed: the gate waits a growing backoff and the car fetches
fresh metadata again, within the same attempt).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from firmware_bundles.messages import CampaignNotice, Preconditions, ReportState
from firmware_bundles.window import OUTSIDE_WINDOW, InstallWindow, hold_text
from vehicle_agent.consent import Channel, Offer, remote_answer
from vehicle_agent.journal import CampaignRecord, OwnerEvent
from vehicle_agent.owner import Consent, OwnerHook, describe
from vehicle_agent.vehicle import Reading, VehicleState

log = logging.getLogger(__name__)

S = ReportState
T = TypeVar("T")


class Blocker(StrEnum):
    NOT_PARKED = "not_parked"
    IGNITION_ON = "ignition_on"
    BATTERY_LOW = "battery_low"
    NETWORK_NOT_ALLOWED = "network_not_allowed"
    OWNER_POSTPONED = "owner_postponed"
    # The signed assignment is no longer what the owner consented to: asked again.
    CONSENT_OUTDATED = "consent_outdated"
    # The Director's signed maintenance window is closed in the car's local time.
    OUTSIDE_WINDOW = OUTSIDE_WINDOW
    # The repositories served metadata past its expiry: fresh metadata is fetched again after a backoff.
    METADATA_EXPIRED = "metadata_expired"


@dataclass(frozen=True)
class Hold:
    """Why the car does not start now."""

    blocker: Blocker
    text: str

    @property
    def detail(self) -> str:
        return f"{self.blocker.value}: {self.text}"


def preconditions_of(notice: CampaignNotice | None) -> Preconditions | None:
    """The notice's preconditions; a notice without them gets the defaults (a car never
    installs while driving). None only for a campaign journaled before notices were kept."""
    if notice is None:
        return None
    return notice.preconditions or Preconditions()


def check(pre: Preconditions | None, car: Reading, bundle_bytes: int = 0) -> Hold | None:
    """The first precondition not met; ``bundle_bytes`` is 0 until the signed size is known."""
    if pre is None:
        return None
    if pre.parked and not car.parked:
        return Hold(Blocker.NOT_PARKED, "the vehicle is not parked")
    if pre.ignition_off and not car.ignition_off:
        return Hold(Blocker.IGNITION_ON, "the ignition is on")
    needed = min(100, pre.min_battery_percent + pre.rollback_reserve_percent)
    if car.battery_percent < needed:
        return Hold(
            Blocker.BATTERY_LOW,
            f"battery at {car.battery_percent}%, needs {needed}% "
            f"({pre.min_battery_percent}% plus {pre.rollback_reserve_percent}% kept for a rollback)",
        )
    if bundle_bytes > pre.large_bundle_bytes and car.network not in pre.large_bundle_networks:
        allowed = ", ".join(n.value for n in pre.large_bundle_networks) or "none"
        return Hold(
            Blocker.NETWORK_NOT_ALLOWED,
            f"{bundle_bytes} byte bundle over {car.network.value}; bundles over "
            f"{pre.large_bundle_bytes} bytes need {allowed}",
        )
    return None


def window_of(record: CampaignRecord) -> InstallWindow | None:
    """The maintenance window the car's verified metadata signed (None: any hour)."""
    if not record.window:
        return None
    return InstallWindow.from_json(json.loads(record.window))


def outside_window(record: CampaignRecord, now: datetime) -> Hold | None:
    """The hold while the signed window is closed at ``now``; its text names the window and the next try."""
    window = window_of(record)
    if window is None or window.inside(now):
        return None
    return Hold(Blocker.OUTSIDE_WINDOW, hold_text(window, now))


def stored(notice: CampaignNotice) -> str:
    """The notice as the journal keeps it: without the signed metadata files it carried (used once)."""
    return notice.model_dump_json(exclude_none=True, exclude={"director_metadata", "image_metadata"})


def notice_of(record: CampaignRecord) -> CampaignNotice | None:
    """The notice that started this attempt (None in a journal written before notices were kept)."""
    if not record.notice:
        return None
    try:
        return CampaignNotice.model_validate_json(record.notice)
    except ValueError:
        log.warning("campaign %s: stored notice unreadable; no preconditions or owner notice", record.campaign_id)
        return None


class NoticeReader:
    """:func:`notice_of`, parsed once per attempt: each step of an attempt reads the same notice.

    One per agent (one car); it remembers the last text read and its notice.
    """

    def __init__(self) -> None:
        self._last: tuple[str, CampaignNotice | None] = ("", None)

    def of(self, record: CampaignRecord) -> CampaignNotice | None:
        text, notice = self._last
        if record.notice != text:
            notice = notice_of(record)
            self._last = (record.notice, notice)
        return notice


def needs_consent(notice: CampaignNotice | None) -> bool:
    """A non-safety update that waits for the owner's yes (a safety recall never asks)."""
    return notice is not None and notice.requires_consent and not notice.safety_recall


class ConsentOutdated(Exception):
    """Raised (from the download thread) when the signed images are not the ones consented to."""

    def __init__(self, consented: str, signed: str) -> None:
        self.hold = Hold(
            Blocker.CONSENT_OUTDATED,
            f"the owner consented to images {consented or '(none recorded)'}; the signed assignment now "
            f"names {signed}: asking again",
        )
        super().__init__(self.hold.detail)


def outdated(record: CampaignRecord, exc: ConsentOutdated) -> CampaignRecord:
    """Back to asking: the consent no longer holds."""
    return defer(record, exc.hold, consented=False, consent_images="")


class Withdrawn(Exception):
    """A withdrawal for the campaign arrived while the gate was waiting."""


class HeldAtDownload(Exception):
    """Raised (from the download thread) when a precondition fails once the bundle size is known."""

    def __init__(self, hold: Hold, bundle_bytes: int) -> None:
        super().__init__(hold.detail)
        self.hold = hold
        self.bundle_bytes = bundle_bytes


def defer(record: CampaignRecord, hold: Hold, **changes: Any) -> CampaignRecord:
    """A new deferral: its report carries the raised count."""
    return record.advance(S.DEFERRED, deferrals=record.deferrals + 1, detail=hold.detail, **changes)


def _logged(record: CampaignRecord, what: str, text: str | None = None, images: str | None = None) -> bool:
    return any(
        e.what == what and e.attempt == record.attempt and text in (None, e.text) and images in (None, e.images)
        for e in record.owner_log
    )


def owes_result(record: CampaignRecord) -> bool:
    """Terminal, the owner saw this attempt's notice, and has not been told how it ended."""
    if not record.state.terminal or record.state is S.DECLINED:
        return False
    return _logged(record, "notice") and not _logged(record, "result")


class StartGate:
    """One car's gate; :meth:`poke` (thread-safe) makes a waiting gate look again now."""

    def __init__(
        self,
        vehicle: VehicleState,
        owner: OwnerHook,
        *,
        clock: Callable[[], datetime],
        sleep: Callable[[float], Awaitable[Any]],
        interval: float,
        jitter: float,
        rng: random.Random | None = None,
        offer: Callable[[], Awaitable[Offer]],
        stale_delay: Callable[[int], float] | None = None,
    ) -> None:
        """``offer`` verifies the Director's and Image repository's metadata and says what they assign;
        ``stale_delay(n)``: seconds before the ``n``-th fetch of fresh metadata after expired metadata."""
        self.vehicle = vehicle
        self.owner = owner
        self._offer = offer
        self._clock = clock
        self._sleep = sleep
        self._interval = interval
        self._jitter = jitter
        self._rng = rng or random.Random()
        self._stale_delay = stale_delay or (lambda _tries: interval)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        vehicle.watch(self.poke)

    def poke(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    def log(self, record: CampaignRecord, what: str, text: str, images: str = "", channel: str = "") -> CampaignRecord:
        event = OwnerEvent(self._clock().isoformat(), record.attempt, what, text[:1000], images, channel)
        return replace(record, owner_log=(*record.owner_log, event))

    async def start(
        self, record: CampaignRecord, notice: CampaignNotice | None, withdrawn: Callable[[], bool]
    ) -> CampaignRecord:
        """From ``notified`` or ``consented``: the notice (once per attempt), then decide."""
        if notice is not None and not _logged(record, "notice"):
            await self.owner.show_notice(notice)  # at least once: journaled with the next step
            record = self.log(record, "notice", describe(notice))
        return await self._decide(record, notice, withdrawn)

    async def wait(
        self, record: CampaignRecord, notice: CampaignNotice | None, withdrawn: Callable[[], bool]
    ) -> CampaignRecord:
        """From ``deferred``: look again after each pause until something changes.

        Outside the signed window the car sleeps until the window opens (a vehicle-state
        change wakes it, but it does not move before the opening).
        """
        while True:
            await self._pause(withdrawn, self._delay(record))
            if record.detail.startswith(f"{Blocker.OUTSIDE_WINDOW.value}:") and outside_window(record, self._clock()):
                continue
            nxt = await self._decide(record, notice, withdrawn)
            if nxt.state is not S.DEFERRED or nxt.detail != record.detail:
                return nxt
            # still held for the same reason: no new report, keep the consent log
            record = replace(record, owner_log=nxt.owner_log)

    async def _decide(
        self, record: CampaignRecord, notice: CampaignNotice | None, withdrawn: Callable[[], bool]
    ) -> CampaignRecord:
        if notice is not None and needs_consent(notice) and not (record.consented and record.consent_images):
            return await self._consent(record, notice, withdrawn)
        hold = check(preconditions_of(notice), self.vehicle.read(), record.bundle_bytes)
        if hold is not None:
            return defer(record, hold)
        return record.advance(S.DOWNLOADING, targets=(), detail="")

    async def _consent(
        self, record: CampaignRecord, notice: CampaignNotice, withdrawn: Callable[[], bool]
    ) -> CampaignRecord:
        """Verify first, then take the owner page's signed answer for these images, or ask the owner."""
        offer = await self._until_withdrawn(self._offer(), withdrawn)
        answer, ignored = remote_answer(offer, record.campaign_id)
        if ignored and not _logged(record, "consent_ignored", ignored):
            record = self.log(record, "consent_ignored", ignored, offer.key)
        channel = Channel.OWNER_PAGE
        if answer is None:
            answer = await self._until_withdrawn(self.owner.ask_consent(notice, offer), withdrawn)
            channel = self.owner.channel
        else:
            await self.owner.consent_given_elsewhere(notice, answer)
        if not _logged(record, "consent", answer.value, offer.key):  # a headless car postpones every interval
            record = self.log(record, "consent", answer.value, offer.key, channel)
        said = f"{offer.summary()} (via {channel})"[:900]
        if answer is Consent.ACCEPT:
            return record.advance(
                S.CONSENTED, consented=True, consent_images=offer.key, detail=f"the owner accepted {said}"
            )
        if answer is Consent.DECLINE:
            return record.advance(S.DECLINED, detail=f"the owner declined {said}")
        return defer(record, Hold(Blocker.OWNER_POSTPONED, f"the owner postponed {said}"))

    def _delay(self, record: CampaignRecord) -> float:
        """Until the next look: the window's opening (plus a jittered moment, so a fleet does not start
        in step), the backoff after expired metadata, or the retry interval (jittered)."""
        spread = self._rng.uniform(-self._jitter, self._jitter)
        if record.detail.startswith(f"{Blocker.OUTSIDE_WINDOW.value}:"):
            window, now = window_of(record), self._clock()
            if window is not None and not window.inside(now):
                until = (window.next_start(now) - now).total_seconds()
                return max(0.0, until) + abs(spread) * min(self._interval, 60.0)
        if record.detail.startswith(f"{Blocker.METADATA_EXPIRED.value}:"):
            return self._stale_delay(record.stale_tries) * (1 + spread)
        return self._interval * (1 + spread)

    async def _pause(self, withdrawn: Callable[[], bool], delay: float) -> None:
        """``delay`` seconds, or less on a wake-up."""
        self._loop = asyncio.get_running_loop()
        if withdrawn():
            raise Withdrawn
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
        if sleeper.done() and not sleeper.cancelled():
            sleeper.result()  # an injected sleep that raises stops the wait
        self._wake.clear()
        if withdrawn():
            raise Withdrawn

    async def _until_withdrawn(self, work: Awaitable[T], withdrawn: Callable[[], bool]) -> T:
        """Await ``work`` (the owner may take a while); a withdrawal cancels it and raises :class:`Withdrawn`."""
        self._loop = asyncio.get_running_loop()
        task: asyncio.Future[T] = asyncio.ensure_future(work)
        try:
            while True:
                if withdrawn():
                    raise Withdrawn
                waker: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({task, waker}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                if task.done():
                    return task.result()
                self._wake.clear()
        finally:
            task.cancel()
