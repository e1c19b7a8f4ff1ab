"""The scheduler: one component, one lock, an injected clock, applying each campaign's plan.

On every tick (periodic, after ingest batches that moved a car, after a launch or a
control action) it, per campaign:

1. takes late joiners into a dynamic campaign;
2. times out cars stuck installing (or never answering, if the plan asks);
3. judges the open wave: errors past the threshold pause the campaign (and, if the
   plan names a rollback release, launch a rollback campaign to the wave's remedied
   cars), enough remedied cars open the next wave;
4. schedules retries (with backoff) for transient failures and timeouts;
5. notifies the next cars the waves, the rate limit, the start time, each car's
   local maintenance windows and the one-update-per-car rule allow: it signs their
   Director metadata and hands the notices to the dispatcher.

Safety recalls are visited first and a feature campaign waits for a car's unfinished
safety recall, so a safety recall takes precedence. The work is synchronous under a
threading lock (run in a worker thread), so the periodic tick, the ingest hook and the
API never interleave; on PostgreSQL the campaign row is locked too, for replicas.

Ingest and pokes never wait for a tick: they ask for one, and asks made while a tick
runs coalesce into exactly one more tick after it. A tick asked for by ingest alone runs
at most every ``report_gap_s`` (``OTA_SCHEDULER_REPORT_GAP_S``): a tick counts the
campaign's cars per state, and under a stream of reports back-to-back ticks kept the
database busy with little to decide. A tick that hit its cap carries on at
once with a doubled cap (up to ``_MAX_CARRY_FACTOR`` times ``max_per_tick``): the first
notices of a launch go out after a small batch, the rest in few large ones, each batch
published while the next one is prepared.

Whatever goes wrong in one campaign's tick stays in that campaign: its work is rolled
back and, unless the database itself failed (an outage or a race with a replica, tried
again at the next tick), the campaign is paused with the error as its reason, logged
once, and left alone until an operator resumes or cancels it; the others tick on. A
campaign whose every car is final (nothing to notify, nothing in flight, no retry
scheduled or still owed) is ``completed``; a car moving again reopens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ota_server.clock import Clock
from ota_server.db.models import Campaign, CampaignVehicle, Ecu, Recall, Release, Vehicle
from ota_server.rollout import plan as rules
from ota_server.rollout import transitions
from ota_server.rollout.states import (
    ERRORS,
    IN_FLIGHT,
    INSTALLING,
    NOT_STARTED,
    Cause,
    VinState,
)
from ota_server.schemas import Population
from ota_server.services import campaigns as campaign_service
from ota_server.services import inventory
from ota_server.services import population as populations
from ota_server.services.campaigns import ACTIVE, CANCELLED, COMPLETED, PAUSED, REMEDY, ROLLBACK, Outbound
from ota_server.services.owner_links import OwnerLinks
from ota_server.services.recalls import release_floor
from ota_server.signing.director import Director
from ota_server.signing.image_repo import target_for

log = logging.getLogger(__name__)

T = TypeVar("T")
Dispatch = Callable[[Sequence[Outbound]], None]
_CHUNK = 500
_CANDIDATE_PAGE = 1000  # cars read per query while choosing whom to release
_MAX_CARRY_FACTOR = 8  # a tick carrying on a capped one releases up to this many times max_per_tick
_REASON_MAX = 1000  # characters of an error kept as a campaign's status reason
FAULT_PREFIX = "internal error in tick"


@dataclass
class TickResult:
    """What one tick did (for logs and tests)."""

    messages: list[Outbound] = field(default_factory=list)
    notified: int = 0
    retried: int = 0
    timed_out: int = 0
    joined: int = 0
    paused: list[int] = field(default_factory=list)
    opened: list[tuple[int, int]] = field(default_factory=list)  # (campaign, wave)
    rollbacks: list[tuple[int, int]] = field(default_factory=list)  # (tripped campaign, rollback campaign)
    faulted: list[int] = field(default_factory=list)  # campaigns paused by an error in their own tick

    def add(self, part: TickResult) -> None:
        """Take in one campaign's committed work."""
        self.messages += part.messages
        self.notified += part.notified
        self.retried += part.retried
        self.timed_out += part.timed_out
        self.joined += part.joined
        self.paused += part.paused
        self.opened += part.opened
        self.rollbacks += part.rollbacks
        self.faulted += part.faulted


def retry_owed(plan: rules.RolloutPlan) -> ColumnElement[bool]:
    """Cars the plan still owes an automatic retry that is not scheduled yet.

    A transient failure or a timeout, retries left. The one definition both the scheduler
    (which schedules them) and progress (for which they are not final) use.
    """
    state = CampaignVehicle.state
    return and_(
        CampaignVehicle.next_retry_at.is_(None),
        CampaignVehicle.retries < plan.max_retries,
        or_(
            state == VinState.TIMED_OUT.value,
            and_(state == VinState.FAILED.value, CampaignVehicle.reason.in_(sorted(rules.TRANSIENT_REASONS))),
        ),
    )


def can_still_change(plan: rules.RolloutPlan | None) -> ColumnElement[bool]:
    """Cars that may still move without an operator: not notified yet or in flight, or a retry to come.

    ``plan`` None (a stored plan that no longer reads): any error without a retry may still get one.
    """
    owed = CampaignVehicle.state.in_([s.value for s in ERRORS]) if plan is None else retry_owed(plan)
    in_flight = CampaignVehicle.state.in_([s.value for s in IN_FLIGHT])
    return or_(in_flight, CampaignVehicle.next_retry_at.is_not(None), owed)


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


class Scheduler:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        director: Director,
        clock: Clock,
        repo_url: str,
        dispatch: Dispatch,
        *,
        max_per_tick: int = 1000,
        report_gap_s: float = 0.0,
        owner_links: OwnerLinks | None = None,
    ) -> None:
        """``owner_links``: each car's notice carries its owner-page link (none without)."""
        self._sessions = sessions
        self._owner_links = owner_links
        self._director = director
        self._clock = clock
        self._repo_url = repo_url
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
        self._carry = 0  # cars the next carried-on tick may release (0: not carrying on)
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

    def tick_sync(self, campaign_ids: Collection[int] | None = None, *, limit: int | None = None) -> TickResult:
        """One tick; ``limit`` caps the cars each campaign releases (default ``max_per_tick``)."""
        result = TickResult()
        limit = self._max_per_tick if limit is None else limit
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
                    self._campaign_tick(session, campaign_id, part, limit)
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
        return await self._tick(campaign_ids, self._max_per_tick)

    async def _tick(self, campaign_ids: Collection[int] | None, limit: int) -> TickResult:
        result = await asyncio.to_thread(self.tick_sync, campaign_ids, limit=limit)
        if result.messages:
            self._dispatch(result.messages)  # published on the loop while the next tick runs
        if result.notified + result.retried >= limit:
            # More cars are waiting: carry on at once instead of at the next interval, with
            # larger batches (the first, small one got the first notices out quickly).
            self._carry = min(2 * limit, _MAX_CARRY_FACTOR * self._max_per_tick)
            self._want()
        for campaign_id in result.paused:
            log.warning("campaign %d paused: error threshold crossed", campaign_id)
        for parent_id, child_id in result.rollbacks:
            log.warning("campaign %d: rollback campaign %d launched", parent_id, child_id)
        return result

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
                limit, self._carry = self._carry or self._max_per_tick, 0
                try:
                    await self._tick(None, limit)
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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- one campaign ------------------------------------------------------------

    def _campaign_tick(self, session: Session, campaign_id: int, result: TickResult, limit: int) -> None:
        # Replicas: the row lock makes judging a gate, opening a wave or launching a rollback
        # happen once; a campaign another replica is ticking right now is skipped (its tick, or
        # the next periodic one, judges it), and the row is re-read, never taken from this
        # session's identity map, so a decision is made on what the other replica committed.
        campaign = session.scalars(
            select(Campaign)
            .where(Campaign.id == campaign_id)
            .with_for_update(skip_locked=True, key_share=True)
            .execution_options(populate_existing=True)
        ).one_or_none()
        if campaign is None:
            return
        recall = session.get(Recall, campaign.recall_id)
        assert recall is not None  # foreign key
        plan = campaign_service.plan_of(recall, campaign)
        now = self._clock()
        if recall.dynamic and campaign.kind == REMEDY and campaign.status in (ACTIVE, COMPLETED):
            result.joined += self._join_late(session, campaign, recall)
        result.timed_out += self._time_out(session, campaign, plan, now)
        if campaign.status == COMPLETED and self._moving(session, campaign):
            # A late joiner or a timed-out car reporting after all (an operator's retry reopens it itself).
            self._set_status(campaign, ACTIVE, "reopened: a car is moving again", now)
        if campaign.status == ACTIVE:
            self._judge(session, campaign, plan, now, result)
        if campaign.status != ACTIVE:
            return
        self._schedule_retries(session, campaign, plan)
        if self._finished(session, campaign, plan):
            self._set_status(campaign, COMPLETED, "every car is final", now)
            log.info("campaign %d completed", campaign.id)
            return
        if recall.remedy_type == "dealer" or (plan.start_at is not None and now < plan.start_at):
            return
        self._release(session, campaign, recall, plan, now, result, limit)

    @staticmethod
    def _set_status(campaign: Campaign, status: str, reason: str, now: datetime) -> None:
        campaign.status, campaign.status_reason, campaign.status_changed_at = status, reason, now

    def _finished(self, session: Session, campaign: Campaign, plan: rules.RolloutPlan) -> bool:
        """No car of the campaign can change any more without an operator."""
        return (
            session.scalar(
                select(CampaignVehicle.vin)
                .where(CampaignVehicle.campaign_id == campaign.id, can_still_change(plan))
                .limit(1)
            )
            is None
        )

    def _moving(self, session: Session, campaign: Campaign) -> bool:
        """A car not notified yet or in flight (by the campaign-state index: cheap on completed campaigns)."""
        in_flight = CampaignVehicle.state.in_([s.value for s in IN_FLIGHT])
        query = select(CampaignVehicle.vin).where(CampaignVehicle.campaign_id == campaign.id, in_flight).limit(1)
        return session.scalar(query) is not None

    def _join_late(self, session: Session, campaign: Campaign, recall: Recall) -> int:
        """A dynamic campaign takes cars that match now and were not in it yet, into its last wave.

        A joiner whose manifests already show the fix on every affected ECU is counted
        ``already_remedied`` as at launch: nothing is sent to it and it is final.
        """
        releases = populations.releases_of(session, recall)
        population = Population.model_validate(recall.population)
        members = {m.vin: m for m in populations.resolve_all(session, population, releases)}
        known = set(session.scalars(select(CampaignVehicle.vin).where(CampaignVehicle.campaign_id == campaign.id)))
        new = sorted(set(members) - known)
        if not new:
            return 0
        campaign_service.freeze_ecus(session, campaign.id, [members[vin] for vin in new])
        last_wave = session.scalar(
            select(func.max(CampaignVehicle.wave)).where(CampaignVehicle.campaign_id == campaign.id)
        )
        now = self._clock()
        done = inventory.already_remedied(session, [members[vin] for vin in new])
        transitions.enroll(
            session,
            [
                {
                    "campaign_id": campaign.id,
                    "vin": vin,
                    "nonce": transitions.new_nonce(),
                    "state": VinState.PENDING.value,
                    "reason": None,
                    "detail": None,
                    "progress_rank": -1,
                    "attempt": 0,
                    "updated_at": now,
                    "wave": last_wave or 0,
                    "deferrals": 0,
                    "retries": 0,
                }
                | (inventory.remedied_row(vin) if vin in done else {})
                for vin in new
            ],
        )
        campaign.population += len(new)
        log.info("campaign %d: %d late joiners", campaign.id, len(new))
        return len(new)

    def _time_out(self, session: Session, campaign: Campaign, plan: rules.RolloutPlan, now: datetime) -> int:
        conditions = []
        if plan.device_timeout_s is not None:
            stale = now - timedelta(seconds=plan.device_timeout_s)
            conditions.append(
                and_(CampaignVehicle.state.in_([s.value for s in INSTALLING]), CampaignVehicle.updated_at <= stale)
            )
        if plan.ack_timeout_s is not None:
            silent = now - timedelta(seconds=plan.ack_timeout_s)
            conditions.append(
                and_(CampaignVehicle.state == VinState.PENDING.value, CampaignVehicle.notified_at <= silent)
            )
        if not conditions:
            return 0
        stuck = session.scalars(
            select(CampaignVehicle).where(CampaignVehicle.campaign_id == campaign.id, or_(*conditions))
        ).all()
        for cv in stuck:
            was = cv.state
            transitions.move(
                session, cv, VinState.TIMED_OUT, Cause.TIMEOUT, now, reason="timed_out", detail=f"no report in {was}"
            )
        return len(stuck)

    def _wave_counts(self, session: Session, campaign_id: int, wave: int) -> dict[str, int]:
        rows = session.execute(
            select(CampaignVehicle.state, func.count())
            .where(CampaignVehicle.campaign_id == campaign_id, CampaignVehicle.wave == wave)
            .group_by(CampaignVehicle.state)
        )
        return {state: n for state, n in rows}

    def _judge(
        self, session: Session, campaign: Campaign, plan: rules.RolloutPlan, now: datetime, result: TickResult
    ) -> None:
        last: int | None = None  # the last wave, read only once a gate passes (a scan of the campaign's cars)
        while True:
            gate = rules.gate(
                plan, self._wave_counts(session, campaign.id, campaign.current_wave), campaign.error_baseline
            )
            if gate.status is rules.GateStatus.TRIPPED:
                campaign.status, campaign.status_changed_at = PAUSED, now
                campaign.status_reason = f"error threshold crossed in wave {campaign.current_wave}: {gate.describe()}"
                result.paused.append(campaign.id)
                if plan.rollback_release_id is not None and campaign.kind == REMEDY:
                    self._roll_back(session, campaign, plan.rollback_release_id, now, result)
                return
            if gate.status is not rules.GateStatus.PASSED:
                return
            if last is None:
                last = (
                    session.scalar(
                        select(func.max(CampaignVehicle.wave)).where(CampaignVehicle.campaign_id == campaign.id)
                    )
                    or 0
                )
            if campaign.current_wave >= last:
                return
            campaign.current_wave += 1
            campaign.error_baseline = 0
            result.opened.append((campaign.id, campaign.current_wave))
            log.info("campaign %d: wave %d opened (%s)", campaign.id, campaign.current_wave, gate.describe())

    def _roll_back(
        self, session: Session, campaign: Campaign, release_id: int, now: datetime, result: TickResult
    ) -> None:
        """Send the plan's rollback release to the tripped wave's remedied cars (they run the bad release).

        Same transaction as the pause; at most one rollback campaign per campaign.
        """
        existing = campaign_service.rollback_of(session, campaign.id)
        if existing is not None:
            campaign.status_reason = f"{campaign.status_reason}; rollback campaign {existing.id} was launched already"
            return
        vins = list(
            session.scalars(
                select(CampaignVehicle.vin)
                .join(Vehicle, Vehicle.vin == CampaignVehicle.vin)
                .where(
                    CampaignVehicle.campaign_id == campaign.id,
                    CampaignVehicle.wave == campaign.current_wave,
                    CampaignVehicle.state == VinState.REMEDIED.value,
                    Vehicle.decommissioned_at.is_(None),  # out of the fleet: no new campaign takes it
                )
                .order_by(CampaignVehicle.vin)
            )
        )
        if not vins:
            campaign.status_reason = (
                f"{campaign.status_reason}; no car of wave {campaign.current_wave} is remedied, "
                "so no rollback campaign was launched"
            )
            return
        child = campaign_service.launch_rollback(session, campaign, release_id, vins, now)
        campaign.status_reason = (
            f"{campaign.status_reason}; rollback campaign {child.id} launched to its {len(vins)} remedied cars"
        )
        result.rollbacks.append((campaign.id, child.id))

    def _schedule_retries(self, session: Session, campaign: Campaign, plan: rules.RolloutPlan) -> None:
        if plan.max_retries == 0:
            return
        owed = select(CampaignVehicle).where(CampaignVehicle.campaign_id == campaign.id, retry_owed(plan))
        for cv in session.scalars(owed).all():
            cv.next_retry_at = cv.updated_at + rules.retry_delay(plan, cv.retries)

    # -- notifying ---------------------------------------------------------------

    def _contenders(self, session: Session, campaign: Campaign) -> list[int]:
        """Other campaigns, not cancelled, with a car not settled yet: only they can hold a car."""
        in_flight = [s.value for s in NOT_STARTED | INSTALLING]
        return list(
            session.scalars(
                select(Campaign.id).where(
                    Campaign.id != campaign.id,
                    Campaign.status != CANCELLED,
                    exists().where(CampaignVehicle.campaign_id == Campaign.id, CampaignVehicle.state.in_(in_flight)),
                )
            )
        )

    def _busy(self, session: Session, recall: Recall, contenders: Sequence[int], vins: Sequence[str]) -> set[str]:
        """Cars another campaign holds: one active update per car; a safety recall goes first."""
        busy: set[str] = set()
        if not contenders or not vins:
            return busy
        in_flight = [s.value for s in NOT_STARTED | INSTALLING]
        installing_states = {s.value for s in INSTALLING}
        for start in range(0, len(vins), _CHUNK):
            rows = session.execute(
                select(CampaignVehicle.vin, CampaignVehicle.state, CampaignVehicle.notified_at, Recall.safety_recall)
                .join(Campaign, Campaign.id == CampaignVehicle.campaign_id)
                .join(Recall, Recall.id == Campaign.recall_id)
                .where(
                    CampaignVehicle.vin.in_(vins[start : start + _CHUNK]),
                    CampaignVehicle.campaign_id.in_(contenders),
                    CampaignVehicle.state.in_(in_flight),
                    Campaign.status != CANCELLED,
                )
            )
            for vin, state, notified_at, other_safety in rows:
                installing = state in installing_states
                # A safety recall waits only for an install under way; a feature update also for
                # any notified campaign and for the car's unfinished safety recall.
                if (
                    installing
                    or (not recall.safety_recall and (notified_at is not None or other_safety))
                    or (notified_at is not None and other_safety)
                ):
                    busy.add(vin)
        return busy

    def _release(
        self,
        session: Session,
        campaign: Campaign,
        recall: Recall,
        plan: rules.RolloutPlan,
        now: datetime,
        result: TickResult,
        limit: int,
    ) -> None:
        in_campaign = CampaignVehicle.campaign_id == campaign.id
        if plan.rate is not None:
            budget = rules.allowance(
                plan.rate,
                session.scalar(select(func.count()).where(in_campaign, CampaignVehicle.notified_at.is_not(None))) or 0,
                session.scalar(
                    select(func.count()).where(in_campaign, CampaignVehicle.notified_at > now - timedelta(minutes=1))
                )
                or 0,
            )
            if budget is not None:
                limit = min(budget, limit)
        if limit <= 0:
            return
        retry_due = and_(CampaignVehicle.state.in_([s.value for s in ERRORS]), CampaignVehicle.next_retry_at <= now)
        first_time = and_(CampaignVehicle.state == VinState.PENDING.value, CampaignVehicle.notified_at.is_(None))
        # Plain rows, not ORM objects: a first release is one UPDATE by VIN list below.
        candidates = (
            select(CampaignVehicle.vin, CampaignVehicle.state, CampaignVehicle.nonce, Vehicle.time_zone)
            .join(Vehicle, Vehicle.vin == CampaignVehicle.vin)
            .where(in_campaign, CampaignVehicle.wave <= campaign.current_wave, or_(first_time, retry_due))
            .order_by(CampaignVehicle.wave, CampaignVehicle.vin)
        )
        contenders = self._contenders(session, campaign)
        zones: dict[str, ZoneInfo] = {}
        chosen: list[tuple[str, str, str]] = []  # (vin, state, nonce)
        # Page through the candidates until ``limit`` are chosen: a tick of a 30,000-car launch
        # reads about one batch, not every car still waiting (which made each tick O(fleet)).
        # Without windows or other campaigns holding cars, every candidate is ready: read no more.
        page = limit if not plan.windows and not contenders else max(2 * limit, _CANDIDATE_PAGE)
        offset = 0
        while len(chosen) < limit:
            rows = session.execute(candidates.offset(offset).limit(page)).all()
            offset += len(rows)
            ready: list[tuple[str, str, str]] = []
            for vin, state, nonce, tz_name in rows:
                if plan.windows:
                    name = tz_name or plan.default_time_zone
                    tz = zones.get(name) or zones.setdefault(name, rules.zone(name))
                    if not rules.in_window(plan.windows, now, tz):
                        continue
                ready.append((vin, state, nonce))
            busy = self._busy(session, recall, contenders, [vin for vin, _, _ in ready])
            chosen += [car for car in ready if car[0] not in busy][: limit - len(chosen)]
            if len(rows) < page:
                break
        if not chosen:
            return
        self._sign(session, campaign, recall, [vin for vin, _, _ in chosen], now)
        fresh = [vin for vin, state, _ in chosen if state == VinState.PENDING.value]
        transitions.mark_notified(session, campaign.id, fresh, now)
        nonces = {vin: nonce for vin, _, nonce in chosen}
        retried = [vin for vin, state, _ in chosen if state != VinState.PENDING.value]
        for start in range(0, len(retried), _CHUNK):  # a retry: a new notice with a new nonce
            for cv in session.scalars(
                select(CampaignVehicle).where(in_campaign, CampaignVehicle.vin.in_(retried[start : start + _CHUNK]))
            ):
                nonces[cv.vin] = transitions.retry(session, cv, now)
        result.retried += len(retried)
        result.notified += len(fresh)
        result.messages += campaign_service.notices(
            recall, campaign, [(vin, nonces[vin]) for vin, _, _ in chosen], self._repo_url, now, self._owner_links
        )

    def _sign(self, session: Session, campaign: Campaign, recall: Recall, vins: list[str], now: datetime) -> None:
        """Sign these cars' Director metadata: every affected ECU's fix in one targets metadata, each with its floor."""
        release = session.get(Release, campaign.release_id)
        assert release is not None
        # A rollback campaign's cars run the bad release: every ECU of the hardware id, below.
        rollback = campaign.kind == ROLLBACK
        releases = [release] if rollback else populations.releases_of(session, recall)
        members = (
            {}
            if rollback
            else {
                m.vin: m.assignments()
                for m in populations.resolve_all(session, Population.model_validate(recall.population), releases, vins)
            }
        )
        by_hardware = {r.hardware_id: r.id for r in releases}
        missing = [v for v in vins if v not in members]
        for start in range(0, len(missing), _CHUNK):  # no longer matching the filters (e.g. version moved)
            for vin, serial, hardware_id in session.execute(
                select(Vehicle.vin, Ecu.serial, Ecu.hardware_id)
                .join(Ecu, Ecu.vehicle_id == Vehicle.id)
                .where(Vehicle.vin.in_(missing[start : start + _CHUNK]), Ecu.hardware_id.in_(by_hardware))
                .where(populations.hardware_confirmed())  # never an ECU whose manifest names other hardware
                .order_by(Vehicle.id, Ecu.primary.desc(), Ecu.id)
            ):
                members.setdefault(vin, {})[serial] = by_hardware[hardware_id]
        images = {r.id: target_for(r) for r in releases}
        floor = release.release_counter if recall.min_release_counter is None else recall.min_release_counter
        floors = {} if rollback else {images[r.id].path: release_floor(recall, r) for r in releases}
        plan = {vin: {serial: images[rid] for serial, rid in members.get(vin, {}).items()} for vin in vins}
        policy = None if rollback else recall.ecu_failure_policy
        self._director.queue(  # signed when each car asks
            session, plan, now, min_release_counter=floor, floors=floors, ecu_failure_policy=policy
        )
