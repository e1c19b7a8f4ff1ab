"""The one way the routes act on running campaigns: each action, then the tick or notices it calls for.

An operator's control (pause, resume, cancel, retry, a per-VIN record, a decommission) runs
while no tick runs (the scheduler's lock: a tick never sees half an action); a launch is
followed at once by a tick of its campaign, so its first cars are notified without waiting
for the periodic one; withdrawals go to the dispatcher. Routes call this and nothing of the
scheduler or the dispatcher themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from ota_server.clock import Clock
from ota_server.rollout.coordinator import Coordinator
from ota_server.rollout.fleet import Outbound
from ota_server.schemas import (
    CampaignPublic,
    LaunchRequestPublic,
    OutcomeCreate,
    RollbackStart,
    VehicleDecommission,
    VehicleDecommissioned,
    VinOutcome,
)
from ota_server.services import campaign_control, vehicles
from ota_server.signing.director import Director

log = logging.getLogger(__name__)
T = TypeVar("T")
Started = TypeVar("Started", bound=CampaignPublic | LaunchRequestPublic)


@dataclass
class Preparations:
    """The signing ahead of launch requests: those under way, those finished and the chains they
    signed (for /metrics)."""

    finished: int = 0
    chains: int = 0
    recalls: set[int] = field(default_factory=set)  # whose request this process has started signing ahead for
    one_at_a_time: asyncio.Lock = field(default_factory=asyncio.Lock)
    under_way: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name="ota-prepare-launch")
        self.under_way.add(task)
        task.add_done_callback(self.under_way.discard)

    async def wait(self, timeout_s: float | None = None) -> None:
        """Until the preparations under way have finished (at most ``timeout_s``)."""
        if self.under_way:
            await asyncio.wait(list(self.under_way), timeout=timeout_s)


@dataclass(frozen=True)
class RolloutControl:
    coordinator: Coordinator
    dispatch: Callable[[Sequence[Outbound]], None]
    director: Director
    clock: Clock
    # Signs ahead what a requested launch's tick would sign (``CampaignFleet.prepare``): recall id ->
    # how many chains.
    prepare: Callable[[int], int] = lambda recall_id: 0
    preparations: Preparations = field(default_factory=lambda: Preparations())

    async def _exclusive(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(self.coordinator.exclusive, fn)

    async def _tick(self, campaign_ids: Collection[int]) -> None:
        await self.coordinator.tick(campaign_ids)

    async def launch(self, start: Callable[[], Started]) -> Started:
        """Run ``start`` (a launch, or a safety recall's request for approval); a launched campaign ticks,
        a request starts signing ahead what its approval's tick would sign (in the background)."""
        result = await asyncio.to_thread(start)
        if isinstance(result, CampaignPublic):
            await self._tick([result.id])
        elif result.state == "awaiting_approval" and result.recall_id not in self.preparations.recalls:
            self.preparations.recalls.add(result.recall_id)  # asking again answers the same request: signed once
            self.preparations.start(self._prepare(result.recall_id))
        return result

    async def _prepare(self, recall_id: int) -> None:
        async with self.preparations.one_at_a_time:  # two requests at once: one after the other
            started = time.monotonic()
            try:
                signed = await asyncio.to_thread(self.prepare, recall_id)
            except Exception:  # the approval's tick signs whatever was not signed ahead
                log.warning("signing ahead for recall %d failed; its launch will sign", recall_id, exc_info=True)
                self.preparations.recalls.discard(recall_id)  # asking again tries again
                signed = 0
        self.preparations.finished += 1
        self.preparations.chains += signed
        if signed:
            log.info("recall %d: %d chains signed ahead in %.1f s", recall_id, signed, time.monotonic() - started)

    async def pause(self, session: Session, campaign_id: int, reason: str, actor: str) -> CampaignPublic:
        return await self._exclusive(lambda: campaign_control.pause(session, campaign_id, reason, actor, self.clock()))

    async def resume(self, session: Session, campaign_id: int, reason: str, actor: str) -> CampaignPublic:
        campaign = await self._exclusive(
            lambda: campaign_control.resume(session, campaign_id, reason, actor, self.clock())
        )
        await self._tick([campaign_id])
        return campaign

    async def cancel(self, session: Session, campaign_id: int, reason: str, actor: str) -> tuple[CampaignPublic, int]:
        """Returns the campaign and how many cars were withdrawn (their withdrawals are sent)."""
        campaign, withdrawn, messages = await self._exclusive(
            lambda: campaign_control.cancel(session, self.director, campaign_id, reason, actor, self.clock())
        )
        self.dispatch(messages)
        return campaign, withdrawn

    async def roll_back(self, session: Session, campaign_id: int, body: RollbackStart, actor: str) -> CampaignPublic:
        """An operator's rollback of a paused campaign; the rollback campaign ticks (its cars are notified)."""
        child = await self._exclusive(
            lambda: campaign_control.roll_back(session, campaign_id, body, actor, self.clock())
        )
        await self._tick([child.id])
        return child

    async def retry_failed(self, session: Session, campaign_id: int) -> tuple[CampaignPublic, int]:
        result = await self._exclusive(lambda: campaign_control.retry_failed(session, campaign_id, self.clock()))
        await self._tick([campaign_id])
        return result

    async def record_outcome(
        self, session: Session, campaign_id: int, vin: str, body: OutcomeCreate, actor: str
    ) -> VinOutcome:
        outcome, messages = await self._exclusive(
            lambda: campaign_control.record_outcome(session, self.director, campaign_id, vin, body, actor, self.clock())
        )
        self.dispatch(messages)
        await self._tick([campaign_id])
        return outcome

    async def decommission(
        self, session: Session, vin: str, body: VehicleDecommission, actor: str
    ) -> VehicleDecommissioned:
        """The car leaves every open campaign (withdrawals sent); those campaigns tick."""
        answer, messages = await self._exclusive(
            lambda: vehicles.decommission(session, self.director, vin, body, actor, self.clock())
        )
        self.dispatch(messages)
        await self._tick(answer.removed_from)
        return answer

    def fleet_changed(self) -> None:
        """Cars were registered: a dynamic campaign may take them at a tick soon."""
        self.coordinator.poke()
