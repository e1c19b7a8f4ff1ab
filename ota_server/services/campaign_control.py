"""Operators steering a running campaign: pause, resume, cancel, retry, rollback, per-VIN records.

Each function changes rows and commits once (the audited session adds the audit entry
to that commit); the API runs them under the scheduler's lock so a tick never sees
half an action. Messages to send (withdrawals) are returned, never sent from here.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware_bundles.vin import normalize_vin
from ota_server.db.models import Campaign, CampaignVehicle, Recall
from ota_server.domain.rollout_plan import MISSED_REASON, missed_words
from ota_server.domain.states import ERRORS, INSTALLING, NOT_STARTED, CampaignKind, Cause, VinState, allowed
from ota_server.domain.waves import wave_number
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.rollout import rollback, transitions
from ota_server.rollout.campaign_tick import plan_of, stalled
from ota_server.schemas import CampaignPublic, OutcomeCreate, RollbackStart, VinOutcome
from ota_server.services import campaign_view
from ota_server.services.campaigns import ACTIVE, CANCELLED, COMPLETED, PAUSED, Outbound, withdrawal
from ota_server.signing.director import Director


def _campaign(session: Session, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    return campaign


def _set_status(campaign: Campaign, status: str, reason: str, now: datetime) -> None:
    campaign.status, campaign.status_reason, campaign.status_changed_at = status, reason or None, now


def pause(session: Session, campaign_id: int, reason: str, actor: str, now: datetime) -> CampaignPublic:
    """No further car is notified (nor retried); cars already working carry on and report."""
    campaign = _campaign(session, campaign_id)
    if campaign.status != ACTIVE:
        raise Conflict(f"campaign {campaign_id} is {campaign.status}, not active")
    _set_status(campaign, PAUSED, f"paused by {actor}" + (f": {reason}" if reason else ""), now)
    session.commit()
    return campaign_view.public(session, campaign, now)


def resume(session: Session, campaign_id: int, reason: str, actor: str, now: datetime) -> CampaignPublic:
    """Notify again. The open wave's current errors count as seen, so the gate does not trip on them twice.

    Conflict when the open wave can no longer pass its success threshold while a later wave waits
    (:func:`~ota_server.rollout.campaign_tick.stalled`): resuming would change nothing, so the answer says
    what would (retry its failed cars, or cancel), rather than the scheduler pausing it again at once.
    """
    campaign = _campaign(session, campaign_id)
    if campaign.status != PAUSED:
        raise Conflict(f"campaign {campaign_id} is {campaign.status}, not paused")
    seen = (
        session.query(CampaignVehicle)
        .filter(
            CampaignVehicle.campaign_id == campaign_id,
            CampaignVehicle.wave == campaign.current_wave,
            CampaignVehicle.state.in_([s.value for s in ERRORS]),
        )
        .count()
    )
    recall = session.get(Recall, campaign.recall_id)
    assert recall is not None  # foreign key
    plan = campaign_view.shown_plan(recall, campaign)  # unreadable: resumed, and its tick pauses it again
    gate = None if plan is None else stalled(session, campaign, plan, seen)
    if gate is not None:
        missed = missed_words(wave_number(campaign.current_wave), gate)
        raise Conflict(
            f"campaign {campaign_id}: resuming changes nothing, {missed} "
            f"and no car of that wave can change: retry its failed cars first (ota campaigns retry {campaign_id} / "
            "the Retry button; then resume), record them if a dealer fixed them, or cancel the campaign"
        )
    campaign.error_baseline = seen
    _set_status(campaign, ACTIVE, f"resumed by {actor}" + (f": {reason}" if reason else ""), now)
    session.commit()
    return campaign_view.public(session, campaign, now)


def roll_back(session: Session, campaign_id: int, body: RollbackStart, actor: str, now: datetime) -> CampaignPublic:
    """Start the rollback of a paused remedy campaign by hand: its plan's rollback release to the
    remedied cars of the open wave or of the whole campaign. Returns the rollback campaign.

    Conflict when the campaign is not a paused remedy campaign, its plan names no rollback
    release, it was rolled back already, or no car of that reach is remedied.
    """
    campaign = _campaign(session, campaign_id)
    if campaign.kind != CampaignKind.REMEDY or campaign.status != PAUSED:
        raise Conflict(f"campaign {campaign_id} is a {campaign.status} {campaign.kind} campaign: pause it first")
    recall = session.get(Recall, campaign.recall_id)
    assert recall is not None  # foreign key
    plan = plan_of(recall, campaign)
    if plan.rollback_release_id is None:
        raise Conflict(f"the recall's rollout plan names no rollback_release_id to roll campaign {campaign_id} back to")
    existing = rollback.rollback_of(session, campaign_id)
    if existing is not None:
        raise Conflict(f"campaign {campaign_id} was rolled back already: rollback campaign {existing.id}")
    reach = body.reach or ("campaign" if plan.rollback_reach == "none" else plan.rollback_reach)
    campaign.status_reason = f"rollback started by {actor}" + (f": {body.reason}" if body.reason else "")
    child = rollback.roll_back(session, campaign, plan.rollback_release_id, now, reach)
    if child is None:
        raise Conflict(f"campaign {campaign_id}: {campaign.status_reason}")
    session.commit()
    return campaign_view.public(session, child, now)


def cancel(
    session: Session, director: Director, campaign_id: int, reason: str, actor: str, now: datetime
) -> tuple[CampaignPublic, int, list[Outbound]]:
    """Withdraw every car that has not started; cars installing finish (or roll back) and report.

    A car that was notified gets a withdrawal (retained, so it replaces the notice) and an
    empty Director assignment, so even a car that missed the withdrawal is told to install
    nothing new. Returns the campaign, how many cars were withdrawn and the withdrawals.
    """
    campaign = _campaign(session, campaign_id)
    if campaign.status == CANCELLED:
        raise Conflict(f"campaign {campaign_id} is already cancelled")
    _set_status(campaign, CANCELLED, f"cancelled by {actor}" + (f": {reason}" if reason else ""), now)
    rows = session.scalars(
        select(CampaignVehicle).where(
            CampaignVehicle.campaign_id == campaign_id,
            CampaignVehicle.state.in_([s.value for s in NOT_STARTED]),
        )
    ).all()
    notified = [cv for cv in rows if cv.notified_at is not None]
    for cv in rows:
        transitions.withdraw(session, cv, now)
    for cv in notified:
        transitions.withdrawal_owed(cv)
    if notified:
        director.queue(session, {cv.vin: {} for cv in notified}, now)
    for cv in session.scalars(
        select(CampaignVehicle).where(
            CampaignVehicle.campaign_id == campaign_id, CampaignVehicle.next_retry_at.is_not(None)
        )
    ):
        cv.next_retry_at = None
    session.commit()
    messages: list[Outbound] = [withdrawal(campaign_id, cv.vin, cv.nonce, now) for cv in notified]
    return campaign_view.public(session, campaign, now), len(rows), messages


def retry_failed(session: Session, campaign_id: int, now: datetime) -> tuple[CampaignPublic, int]:
    """Every failed, rolled-back or timed-out car gets a new notice at the next tick (any reason).

    Operator retries do not count against the plan's automatic retry limit's backoff:
    they are due at once, and still obey waves, the rate limit and windows. A campaign the
    scheduler paused because its open wave missed its success threshold is active again: the
    retry is what that pause asked for (an error-threshold pause still needs a resume).
    """
    campaign = _campaign(session, campaign_id)
    if campaign.status == CANCELLED:
        raise Conflict(f"campaign {campaign_id} is cancelled")
    rows = session.scalars(
        select(CampaignVehicle).where(
            CampaignVehicle.campaign_id == campaign_id,
            CampaignVehicle.state.in_([s.value for s in ERRORS]),
        )
    ).all()
    for cv in rows:
        cv.next_retry_at = now
    if rows and campaign.status == COMPLETED:
        _set_status(campaign, ACTIVE, "reopened: an operator retries its failed cars", now)
    elif rows and campaign.status == PAUSED and (campaign.status_reason or "").startswith(MISSED_REASON):
        _set_status(campaign, ACTIVE, "resumed: an operator retries its failed cars", now)
    session.commit()
    return campaign_view.public(session, campaign, now), len(rows)


def record_outcome(
    session: Session,
    director: Director,
    campaign_id: int,
    raw_vin: str,
    body: OutcomeCreate,
    actor: str,
    now: datetime,
) -> tuple[VinOutcome, list[Outbound]]:
    """An operator's record for one car, with its evidence; refused if the state machine forbids it.

    A car sent a notice and not started gets a withdrawal (replacing the retained notice) and an empty
    Director assignment, as a cancel gives it: a car recorded fixed at a dealer, not needing the remedy
    or stolen must not install it when it next connects. Returns the withdrawal the caller sends.
    """
    _campaign(session, campaign_id)
    vin = normalize_vin(raw_vin)
    cv = session.get(CampaignVehicle, (campaign_id, vin))
    if cv is None:
        raise NotFound(f"VIN {vin} is not in campaign {campaign_id}")
    target = VinState(body.outcome)
    if target is VinState.UNREACHABLE and body.reason is None:
        raise InvalidInput("unreachable needs a reason: exported, stolen, scrapped or other")
    if target is not VinState.UNREACHABLE and body.reason is not None:
        raise InvalidInput(f"reason is only for unreachable, not {target}")
    if not allowed(VinState(cv.state), target, Cause.OPERATOR):
        raise Conflict(f"VIN {vin} is {cv.state} in campaign {campaign_id}; it cannot be recorded as {target}")
    owes_withdrawal = cv.notified_at is not None and VinState(cv.state) in NOT_STARTED
    transitions.record_by_operator(
        session,
        cv,
        target,
        now,
        actor=actor,
        reason=body.reason.value if body.reason else None,
        detail=body.evidence,
        evidence_ref=body.reference,
    )
    if owes_withdrawal:
        transitions.withdrawal_owed(cv)
        director.queue(session, {vin: {}}, now)
    session.commit()
    messages: list[Outbound] = [withdrawal(campaign_id, vin, cv.nonce, now)] if owes_withdrawal else []
    outcome = VinOutcome(
        campaign_id=campaign_id,
        vin=vin,
        state=cv.state,
        reason=cv.reason,
        detail=cv.detail,
        recorded_by=cv.recorded_by,
        evidence_ref=cv.evidence_ref,
        updated_at=cv.updated_at,
    )
    return outcome, messages


def remove_vehicle(
    session: Session, director: Director, vin: str, reason: str, detail: str | None, actor: str, now: datetime
) -> tuple[list[int], list[Outbound]]:
    """A car leaving the fleet becomes unreachable (with ``reason``) in every campaign not cancelled.

    Not committed: the caller stores the car's own change in the same transaction. A car that
    was sent a notice gets a withdrawal (replacing the retained notice) and an empty Director
    assignment, as a cancel gives it. A car installing is refused (Conflict): it may be running
    the new image right now, so it reports or times out first. A car already remedied or
    unreachable keeps its record. Returns the campaigns it left and the withdrawals to send.
    """
    rows = session.scalars(
        select(CampaignVehicle)
        .join(Campaign, Campaign.id == CampaignVehicle.campaign_id)
        .where(CampaignVehicle.vin == vin, Campaign.status != CANCELLED)
        .order_by(CampaignVehicle.campaign_id)
    ).all()
    busy = [str(cv.campaign_id) for cv in rows if VinState(cv.state) in INSTALLING]
    if busy:
        raise Conflict(
            f"VIN {vin} is installing in campaign {', '.join(busy)}: decommission it once it reports or times out"
        )
    leaving = [cv for cv in rows if allowed(VinState(cv.state), VinState.UNREACHABLE, Cause.OPERATOR)]
    notified = [cv for cv in leaving if cv.notified_at is not None]
    for cv in leaving:
        transitions.record_by_operator(
            session,
            cv,
            VinState.UNREACHABLE,
            now,
            actor=actor,
            reason=reason,
            detail=detail,
            evidence_ref=cv.evidence_ref,
        )
    for cv in notified:
        transitions.withdrawal_owed(cv)
    if notified:
        director.queue(session, {vin: {}}, now)
    messages: list[Outbound] = [withdrawal(cv.campaign_id, cv.vin, cv.nonce, now) for cv in notified]
    return [cv.campaign_id for cv in leaving], messages
