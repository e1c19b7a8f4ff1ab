"""A campaign as every API answer shows it: its wave numbered from 1, its scheduled start.

The one place a :class:`~ota_server.db.models.Campaign` row becomes a
:class:`~ota_server.schemas.CampaignPublic` (the row keeps 0-based wave indexes; see
:mod:`ota_server.domain.waves`).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import ValidationError
from sqlalchemy.orm import Session

from ota_server.db.models import Campaign, Recall
from ota_server.domain.rollout_plan import RolloutPlan, not_started
from ota_server.domain.states import CampaignStatus
from ota_server.domain.waves import wave_number
from ota_server.rollout.campaign_tick import plan_of
from ota_server.schemas import CampaignPublic

WAITING = (CampaignStatus.ACTIVE, CampaignStatus.PAUSED)


def schedule(plan: RolloutPlan | None, status: str, now: datetime) -> tuple[datetime | None, bool]:
    """The plan's start (None: at launch) and whether the campaign still waits for it (scheduled).

    ``plan`` None: the stored plan no longer reads (the scheduler paused the campaign and says why).
    """
    if plan is None:
        return None, False
    return plan.start_at, status in WAITING and not_started(plan, now)


def shown_plan(recall: Recall, campaign: Campaign | None = None) -> RolloutPlan | None:
    """:func:`plan_of` for the pages and progress; None if the stored plan no longer reads.

    Such a campaign's tick fails and the scheduler pauses it with the error; it must still
    be shown (never run under another plan, though: the scheduler uses :func:`plan_of`).
    """
    try:
        return plan_of(recall, campaign)
    except ValidationError:
        return None


def public(session: Session, campaign: Campaign, now: datetime) -> CampaignPublic:
    """``campaign`` for the API: ``current_wave`` from 1, ``starts_at`` and ``scheduled`` at ``now``."""
    recall = session.get(Recall, campaign.recall_id)
    assert recall is not None  # foreign key
    starts_at, scheduled = schedule(shown_plan(recall, campaign), campaign.status, now)
    return CampaignPublic(
        id=campaign.id,
        recall_id=campaign.recall_id,
        release_id=campaign.release_id,
        population=campaign.population,
        launched_at=campaign.launched_at,
        launch_population=campaign.launch_population,
        status=campaign.status,
        status_reason=campaign.status_reason,
        current_wave=wave_number(campaign.current_wave),
        starts_at=starts_at,
        scheduled=scheduled,
        kind=campaign.kind,
        parent_campaign_id=campaign.parent_campaign_id,
    )
