"""One campaign's tick: the rollout rules applied to its cars, in order.

1. a dynamic campaign takes late joiners (the fleet says who matches);
2. cars stuck installing (or never answering, if the plan asks) time out;
3. the open wave is judged: errors past the threshold pause the campaign (and, if the
   plan names a rollback release, launch a rollback campaign to the wave's remedied cars:
   :mod:`ota_server.rollout.rollback`), enough remedied cars open the next wave, and a wave
   that can no longer pass (:func:`stalled`) pauses the campaign, saying so: only an operator
   moves it on (retry its failed cars, record them, or cancel);
4. retries (with backoff) are scheduled for transient failures and timeouts;
5. a campaign whose every car is final is completed (a car moving again reopens it);
6. the next cars are notified (:mod:`ota_server.rollout.notifying`), unless the recall is a
   dealer remedy or the plan's start time has not come.

The pure rules (waves, gates, thresholds, windows, rates, backoff) are
:mod:`ota_server.domain.rollout_plan`'s; every car's move goes through
:mod:`ota_server.rollout.transitions`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from ota_server.clock import Clock
from ota_server.db.models import Campaign, CampaignVehicle, Recall
from ota_server.domain import rollout_plan as rules
from ota_server.domain.states import ERRORS, IN_FLIGHT, INSTALLING, CampaignKind, CampaignStatus, Cause, VinState
from ota_server.domain.waves import wave_number
from ota_server.rollout import rollback, transitions
from ota_server.rollout.fleet import Fleet, Sendable
from ota_server.rollout.notifying import Notifier

log = logging.getLogger(__name__)

ACTIVE, PAUSED, COMPLETED = CampaignStatus.ACTIVE, CampaignStatus.PAUSED, CampaignStatus.COMPLETED
REMEDY = CampaignKind.REMEDY


@dataclass
class TickResult:
    """What one tick did (for logs and tests)."""

    messages: list[Sendable] = field(default_factory=list)
    notified: int = 0
    retried: int = 0
    timed_out: int = 0
    joined: int = 0
    paused: list[int] = field(default_factory=list)
    opened: list[tuple[int, int]] = field(default_factory=list)  # (campaign, wave)
    rollbacks: list[tuple[int, int]] = field(default_factory=list)  # (tripped campaign, rollback campaign)
    faulted: list[int] = field(default_factory=list)  # campaigns paused by an error in their own tick
    missed: list[int] = field(default_factory=list)  # campaigns paused: their open wave can no longer pass

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
        self.missed += part.missed


def plan_of(recall: Recall, campaign: Campaign | None = None) -> rules.RolloutPlan:
    """The recall's plan for its remedy campaign; a rollback campaign runs the default plan
    (one wave of every car, no thresholds, no further rollback)."""
    if campaign is not None and campaign.kind == CampaignKind.ROLLBACK:
        return rules.RolloutPlan()
    return rules.RolloutPlan.stored(recall.rollout) if recall.rollout else rules.RolloutPlan()


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


def wave_counts(session: Session, campaign_id: int, wave: int) -> dict[str, int]:
    """Cars of wave ``wave`` (an index) per state."""
    rows = session.execute(
        select(CampaignVehicle.state, func.count())
        .where(CampaignVehicle.campaign_id == campaign_id, CampaignVehicle.wave == wave)
        .group_by(CampaignVehicle.state)
    )
    return {state: n for state, n in rows}


def wave_settled(session: Session, campaign_id: int, wave: int, plan: rules.RolloutPlan | None) -> bool:
    """No car of wave ``wave`` (an index) can change any more without an operator."""
    query = select(CampaignVehicle.vin).where(
        CampaignVehicle.campaign_id == campaign_id, CampaignVehicle.wave == wave, can_still_change(plan)
    )
    return session.scalar(query.limit(1)) is None


def last_wave(session: Session, campaign_id: int) -> int:
    """The index of the campaign's last wave that holds cars."""
    query = select(func.max(CampaignVehicle.wave)).where(CampaignVehicle.campaign_id == campaign_id)
    return session.scalar(query) or 0


def stalled(
    session: Session, campaign: Campaign, plan: rules.RolloutPlan, baseline: int | None = None
) -> rules.Gate | None:
    """The open wave's gate when that wave can no longer pass it and a later wave waits behind it, else None.

    Short of its success threshold (tripped or not: ``baseline`` is the errors counted as seen, by default
    the campaign's) and no car of it can change: the later waves would wait for ever. The last wave is never
    stalled: with every car final the campaign completes.
    """
    wave = campaign.current_wave
    seen = campaign.error_baseline if baseline is None else baseline
    gate = rules.gate(plan, wave_counts(session, campaign.id, wave), seen)
    return gate if blocks_later_waves(session, campaign.id, wave, gate, plan) else None


def blocks_later_waves(
    session: Session, campaign_id: int, wave: int, gate: rules.Gate, plan: rules.RolloutPlan
) -> bool:
    """Wave ``wave`` (an index), judged ``gate``, is short of its success threshold, none of its cars can
    change, and a later wave holds cars: those would wait for ever."""
    if gate.remedied >= gate.needed or not wave_settled(session, campaign_id, wave, plan):
        return False
    return last_wave(session, campaign_id) > wave


class CampaignTick:
    def __init__(self, fleet: Fleet, clock: Clock) -> None:
        self._fleet = fleet
        self._clock = clock
        self._notifier = Notifier(fleet)

    def run(self, session: Session, campaign_id: int, result: TickResult, limit: int) -> None:
        """One campaign's tick (the caller commits, or rolls back what it raised)."""
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
        plan = plan_of(recall, campaign)
        now = self._clock()
        if recall.dynamic and campaign.kind == REMEDY and campaign.status in (ACTIVE, COMPLETED):
            result.joined += self._fleet.join_late(session, campaign, recall, now)
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
        if recall.remedy_type == "dealer" or rules.not_started(plan, now):
            return
        notified = self._notifier.release(session, campaign, recall, plan, now, limit)
        result.messages += notified.messages
        result.notified += notified.first
        result.retried += notified.retried

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

    def _judge(
        self, session: Session, campaign: Campaign, plan: rules.RolloutPlan, now: datetime, result: TickResult
    ) -> None:
        last: int | None = None  # the last wave, read only once a gate passes (a scan of the campaign's cars)
        while True:
            gate = rules.gate(plan, wave_counts(session, campaign.id, campaign.current_wave), campaign.error_baseline)
            if gate.status is rules.GateStatus.TRIPPED:
                campaign.status, campaign.status_changed_at = PAUSED, now
                wave = wave_number(campaign.current_wave)
                campaign.status_reason = rules.threshold_reason(wave, gate)
                result.paused.append(campaign.id)
                if plan.rollback_release_id is not None and campaign.kind == REMEDY:
                    child = rollback.roll_back(session, campaign, plan.rollback_release_id, now, plan.rollback_reach)
                    if child is not None:
                        result.rollbacks.append((campaign.id, child.id))
                return
            if gate.status is rules.GateStatus.WAITING:
                self._stall(session, campaign, plan, gate, now, result)
                return
            if last is None:
                last = last_wave(session, campaign.id)
            if campaign.current_wave >= last:
                return
            campaign.current_wave += 1
            campaign.error_baseline = 0
            result.opened.append((campaign.id, campaign.current_wave))
            opened = wave_number(campaign.current_wave)
            log.info("campaign %d: wave %d opened (%s)", campaign.id, opened, gate.describe())

    def _stall(
        self,
        session: Session,
        campaign: Campaign,
        plan: rules.RolloutPlan,
        gate: rules.Gate,
        now: datetime,
        result: TickResult,
    ) -> None:
        """Pause a campaign whose open wave can no longer pass ``gate`` (a waiting gate) while a later wave
        waits: said in its status reason (and a campaign.paused event), not left active and silent for ever."""
        wave = campaign.current_wave
        if not blocks_later_waves(session, campaign.id, wave, gate, plan):
            return
        self._set_status(campaign, PAUSED, rules.missed_reason(wave_number(wave), gate), now)
        result.missed.append(campaign.id)
        log.warning("campaign %d paused: %s", campaign.id, campaign.status_reason)

    def _schedule_retries(self, session: Session, campaign: Campaign, plan: rules.RolloutPlan) -> None:
        if plan.max_retries == 0:
            return
        owed = select(CampaignVehicle).where(CampaignVehicle.campaign_id == campaign.id, retry_owed(plan))
        for cv in session.scalars(owed).all():
            cv.next_retry_at = cv.updated_at + rules.retry_delay(plan, cv.retries)
