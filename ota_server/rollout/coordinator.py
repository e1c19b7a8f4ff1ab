"""The coordinator: runs the campaigns' ticks, one at a time, and coalesces the asks for them.

One component, one lock, an injected clock. On every tick (periodic, after ingest batches
that moved a car, after a launch or a control action) it runs each campaign's tick
(:mod:`ota_server.rollout.campaign_tick`: the rollout rules) in its own transaction and
hands the notices to the dispatcher. Safety recalls are visited first. The work is
synchronous under a threading lock (run in a worker thread), so the periodic tick, the
ingest hook and the operators' controls (:mod:`ota_server.services.rollout_control`) never
interleave; on PostgreSQL the campaign row is locked too, for replicas.

Ingest and pokes never wait for a tick: they ask for one, and asks made while a tick
runs coalesce into exactly one more tick after it. A tick asked for by ingest alone runs
at most every ``report_gap_s`` (``OTA_SCHEDULER_REPORT_GAP_S``): a tick counts the
campaign's cars per state, and under a stream of reports back-to-back ticks kept the
database busy with little to decide. A tick that hit its cap (``max_per_tick``,
``OTA_SCHEDULER_MAX_PER_TICK``, 30,000 cars by default) carries on at once with the same cap,
each batch published while the next one is prepared. A launch of up to that many cars is one
tick: every chain is signed while the fleet is still idle, then every notice goes out. In
batches growing from 1,000 (1,000, 4,000, 16,000, 9,000 cars) each later one was prepared
while the cars notified first loaded the machine: at 30,000 cars the first notice came 1.6 s
after the launch and the last 35 s after; in one tick (notices published in bulk) 5.5 and
14 s, the whole recall ~10% longer as every car starts at once (docs/bench/history.md,
session 14).

Whatever goes wrong in one campaign's tick stays in that campaign: its work is rolled
back and, unless the database itself failed (an outage or a race with a replica, tried
again at the next tick), the campaign is paused with the error as its reason, logged
once, and left alone until an operator resumes or cancels it; the others tick on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ota_server.clock import Clock
from ota_server.db.models import Campaign, Recall
from ota_server.domain.states import CampaignStatus
from ota_server.infra.tasks import stop_task
from ota_server.rollout.campaign_tick import CampaignTick, TickResult
from ota_server.rollout.fleet import Fleet, Sendable

log = logging.getLogger(__name__)

T = TypeVar("T")
Dispatch = Callable[[Sequence[Sendable]], None]
_REASON_MAX = 1000  # characters of an error kept as a campaign's status reason
FAULT_PREFIX = "internal error in tick"
PAUSED, CANCELLED = CampaignStatus.PAUSED, CampaignStatus.CANCELLED


def is_transient(exc: BaseException) -> bool:
    """A failure of the database rather than of the campaign: an outage, a lost connection, a race.

    The next tick tries the same work again; anything else would fail the same way each time.
    """
    if not isinstance(exc, DBAPIError):
        return False
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError | IntegrityError)


def fault_reason(exc: BaseException) -> str:
    """The status reason of a campaign paused by ``exc``: its type and message, on one line."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{FAULT_PREFIX}: {type(exc).__name__}: {text}"[:_REASON_MAX]


def _log_tick_failure(exc: Exception) -> None:
    """A whole tick failed (a campaign's own fault is handled inside it): the database, most likely."""
    if is_transient(exc):
        log.warning("scheduler tick failed (%s); trying again at the next tick", exc)
    else:
        log.error("scheduler tick failed", exc_info=exc)


class Coordinator:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        fleet: Fleet,
        clock: Clock,
        dispatch: Dispatch,
        *,
        max_per_tick: int = 30_000,
        report_gap_s: float = 0.0,
    ) -> None:
        """``fleet``: who joins, what each car is assigned and told (the services implement it)."""
        self._sessions = sessions
        self._campaigns = CampaignTick(fleet, clock)
        self._clock = clock
        self._dispatch = dispatch
        self._max_per_tick = max_per_tick
        self._lock = threading.Lock()
        # Campaigns whose own tick failed: (status, status_changed_at) when it was paused for it.
        self._faults: dict[int, tuple[str, datetime | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Ticks asked for (ingest batches, pokes, a capped tick carrying on) run one at a time in
        # one background task; asking while one runs means exactly one more afterwards.
        self._wanted = False
        self._runner: asyncio.Task[None] | None = None
        self._carry = False  # a capped tick left cars waiting: the next one runs at once
        # A tick asked for by ingest alone waits until this long after the previous one ended;
        # any other ask (a launch, a control action, a capped tick carrying on) wakes it at once.
        self._report_gap_s = report_gap_s
        self._urgent = asyncio.Event()
        self._last_tick_end = -math.inf

    # -- running -----------------------------------------------------------------

    def exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (blocking) while no tick runs: control actions change the same rows."""
        with self._lock:
            return fn()

    def tick_sync(self, campaign_ids: Collection[int] | None = None) -> TickResult:
        """One tick; each campaign releases at most ``max_per_tick`` cars."""
        result = TickResult()
        limit = self._max_per_tick
        with self._lock, self._sessions() as session:
            query = (
                select(Campaign.id)
                .join(Recall, Recall.id == Campaign.recall_id)
                .order_by(Recall.safety_recall.desc(), Campaign.id)
            )
            if campaign_ids is not None:
                query = query.where(Campaign.id.in_(list(campaign_ids)))
            queue = list(session.scalars(query))
            for campaign_id in queue:  # grows: a rollback campaign launched this tick runs in it too
                if self._left_alone(session, campaign_id):
                    continue
                part = TickResult()
                try:
                    self._campaigns.run(session, campaign_id, part, limit)
                    session.commit()
                except Exception as exc:  # one campaign's fault never stops the others
                    session.rollback()
                    self._failed(session, campaign_id, exc, result)
                    continue
                self._faults.pop(campaign_id, None)
                result.add(part)
                queue.extend(child for _, child in part.rollbacks)
        return result

    def _status_mark(self, session: Session, campaign_id: int) -> tuple[str, datetime | None] | None:
        row = session.execute(
            select(Campaign.status, Campaign.status_changed_at).where(Campaign.id == campaign_id)
        ).one_or_none()
        return None if row is None else (row[0], row[1])

    def _left_alone(self, session: Session, campaign_id: int) -> bool:
        """A campaign whose tick failed is skipped until someone changes its status (resume, cancel)."""
        mark = self._faults.get(campaign_id)
        return mark is not None and self._status_mark(session, campaign_id) == mark

    def _failed(self, session: Session, campaign_id: int, exc: Exception, result: TickResult) -> None:
        """After a failed campaign tick (rolled back): pause the campaign with the error, log it once.

        A database failure is not the campaign's: it is logged and the next tick tries again.
        A cancelled campaign stays cancelled; any other status becomes paused with the reason.
        """
        if is_transient(exc):
            log.warning("scheduler: campaign %d not ticked (%s); trying again at the next tick", campaign_id, exc)
            return
        reason = fault_reason(exc)
        try:
            campaign = session.scalars(
                select(Campaign)
                .where(Campaign.id == campaign_id)
                .with_for_update(key_share=True)
                .execution_options(populate_existing=True)
            ).one_or_none()
            if campaign is None:
                return
            if campaign.status != CANCELLED and (campaign.status != PAUSED or campaign.status_reason != reason):
                campaign.status, campaign.status_reason, campaign.status_changed_at = PAUSED, reason, self._clock()
            session.commit()
            mark = self._status_mark(session, campaign_id)
        except Exception:
            session.rollback()
            log.exception("scheduler: campaign %d tick failed and the campaign could not be paused", campaign_id)
            return
        if mark is not None:
            self._faults[campaign_id] = mark
        result.faulted.append(campaign_id)
        log.error("scheduler: campaign %d left alone until an operator acts: %s", campaign_id, reason, exc_info=exc)

    async def tick(self, campaign_ids: Collection[int] | None = None) -> TickResult:
        """One tick in a worker thread; its notices go to the dispatcher."""
        result = await asyncio.to_thread(self.tick_sync, campaign_ids)
        if result.messages:
            self._dispatch(result.messages)  # published on the loop while the next tick runs
        if result.notified + result.retried >= self._max_per_tick:
            # More cars are waiting: carry on at once instead of at the next interval.
            self._carry = True
            self._want()
        for campaign_id in result.paused:
            log.warning("campaign %d paused: error threshold crossed", campaign_id)
        for parent_id, child_id in result.rollbacks:
            log.warning("campaign %d: rollback campaign %d launched", parent_id, child_id)
        return result

    async def periodic_tick(self) -> TickResult | None:
        """The periodic job's tick (``OTA_SCHEDULER_INTERVAL_S``, on the replica holding its lease).

        Skipped (None) while ticks asked for run or wait (a launch carrying on, ingest's): each of
        them visits every campaign too, and one squeezed between a launch's batches waited on the
        lock only to tick again what they tick (issue 19: with batches that grew, it also reset
        their growth).
        """
        if self._runner is not None:
            return None
        return await self.tick()

    async def on_reports(self, campaign_ids: set[int]) -> None:
        """The ingest hook: a batch moved cars in ``campaign_ids``. Returns at once.

        A tick follows (exactly one more if one is running: a burst of batches costs one tick,
        not one per batch), and it visits every campaign, not only those: a car that settles in
        one campaign may be the car another campaign was waiting for (one active update per car).
        """
        self._want(urgent=False)

    def poke(self) -> None:
        """Ask for a tick soon, from any thread (e.g. after a registration)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._want)

    def _want(self, *, urgent: bool = True) -> None:
        """Ask for one more tick (on the loop); ticks asked for while one runs coalesce into one."""
        if self._loop is None:  # stopped (or not started): the periodic tick, if any, catches up
            return
        self._wanted = True
        if urgent:
            self._urgent.set()
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run_wanted(), name="ota-scheduler-wanted")

    async def _run_wanted(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._wanted and self._loop is not None:
                wait = self._last_tick_end + self._report_gap_s - loop.time()
                if wait > 0 and not self._urgent.is_set() and not self._carry:
                    with contextlib.suppress(TimeoutError):  # ingest's ask: after the gap, or sooner if urged
                        await asyncio.wait_for(self._urgent.wait(), wait)
                    if self._loop is None:
                        break
                self._wanted = False
                self._urgent.clear()
                self._carry = False
                try:
                    await self.tick()
                except Exception as exc:  # a bad tick must not stop the next one
                    _log_tick_failure(exc)
                self._last_tick_end = loop.time()
        finally:
            self._runner = None

    async def idle(self) -> None:
        """Wait until no tick is asked for or running (the ticks they lead to included)."""
        while self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)

    def start(self, interval_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        if interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(interval_s), name="ota-scheduler")

    async def _run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.tick()
            except Exception as exc:  # a bad tick must not stop the next one
                _log_tick_failure(exc)

    async def stop(self) -> None:
        self._loop = None  # the tick running finishes; none is started after it
        self._urgent.set()  # one waiting out the report gap gives up now
        await self.idle()
        await stop_task(self._task)
        self._task = None
