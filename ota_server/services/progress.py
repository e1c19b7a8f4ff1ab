"""Campaign progress: one count per state, always summing to the campaign's population.

Also per wave (size, counts, the gate's verdict), failures by reason (failed, rolled
back, timed out) and unreachable cars by reason, for operators and regulator reports.
``done`` means no car can change any more without an operator: a failed car whose retry
the plan still owes is not final even before the scheduler has scheduled it.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ota_server.db.models import Campaign, CampaignVehicle, Recall
from ota_server.errors import NotFound
from ota_server.rollout import plan as rules
from ota_server.rollout.scheduler import can_still_change
from ota_server.rollout.states import ERRORS, IN_FLIGHT, VinState
from ota_server.schemas import Progress, WaveProgress
from ota_server.services.campaigns import CANCELLED, rollback_of, shown_plan

STATES = tuple(state.value for state in VinState)


def progress(session: Session, campaign_id: int) -> Progress:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    recall = session.get(Recall, campaign.recall_id)
    assert recall is not None  # foreign key
    plan = shown_plan(recall, campaign)  # None: unreadable (the scheduler paused it), still shown
    in_campaign = CampaignVehicle.campaign_id == campaign_id
    counts = dict.fromkeys(STATES, 0)
    per_wave: dict[int, dict[str, int]] = {}
    for wave, state, n in session.execute(
        select(CampaignVehicle.wave, CampaignVehicle.state, func.count())
        .where(in_campaign)
        .group_by(CampaignVehicle.wave, CampaignVehicle.state)
    ):
        counts[state] = counts.get(state, 0) + n
        per_wave.setdefault(wave, {})[state] = n
    by_reason = select(CampaignVehicle.reason, func.count()).where(in_campaign).group_by(CampaignVehicle.reason)
    failures = {
        reason or "unknown": n
        for reason, n in session.execute(by_reason.where(CampaignVehicle.state.in_([s.value for s in ERRORS])))
    }
    unreachable = {
        reason or "other": n
        for reason, n in session.execute(by_reason.where(CampaignVehicle.state == VinState.UNREACHABLE.value))
    }
    published = session.scalar(
        select(func.count()).where(in_campaign, CampaignVehicle.notice_published_at.is_not(None))
    )
    retries = session.scalar(select(func.count()).where(in_campaign, CampaignVehicle.next_retry_at.is_not(None))) or 0
    waves = []
    for index in sorted(per_wave):
        gate = rules.gate(
            plan or rules.RolloutPlan(),
            per_wave[index],
            campaign.error_baseline if index == campaign.current_wave else 0,
        )
        waves.append(
            WaveProgress(
                index=index,
                size=gate.size,
                counts=per_wave[index],
                remedied=gate.remedied,
                errors=gate.errors,
                needed=gate.needed,
                gate=gate.status.value if plan is not None else "unknown",
                opened=index <= campaign.current_wave,
            )
        )
    if campaign.status == CANCELLED:  # no retry is ever issued again; cars installing still report
        done = sum(counts[s.value] for s in IN_FLIGHT) == 0
    else:
        done = session.scalar(select(CampaignVehicle.vin).where(in_campaign, can_still_change(plan)).limit(1)) is None
    return Progress(
        campaign_id=campaign.id,
        recall_number=recall.campaign_number,
        population=campaign.population,
        counts=counts,
        failures_by_reason=failures,
        notices_published=published or 0,
        done=done,
        status=campaign.status,
        status_reason=campaign.status_reason,
        current_wave=campaign.current_wave,
        waves=waves,
        unreachable_by_reason=unreachable,
        retries_scheduled=retries,
        kind=campaign.kind,
        rollback_campaign_id=rollback.id if (rollback := rollback_of(session, campaign.id)) else None,
    )
