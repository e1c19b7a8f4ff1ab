"""Campaign progress: one count per state, always summing to the frozen population."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from firmware_bundles.messages import ReportState
from ota_server.db.models import Campaign, CampaignVehicle, Recall
from ota_server.errors import NotFound
from ota_server.schemas import Progress

STATES = ("pending", *(state.value for state in ReportState))
TERMINAL = (ReportState.REMEDIED.value, ReportState.FAILED.value)


def progress(session: Session, campaign_id: int) -> Progress:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    recall = session.get(Recall, campaign.recall_id)
    assert recall is not None  # foreign key
    in_campaign = CampaignVehicle.campaign_id == campaign_id
    counts = dict.fromkeys(STATES, 0)
    for state, n in session.execute(
        select(CampaignVehicle.state, func.count()).where(in_campaign).group_by(CampaignVehicle.state)
    ):
        counts[state] = n
    failures = {
        reason or "unknown": n
        for reason, n in session.execute(
            select(CampaignVehicle.reason, func.count())
            .where(in_campaign, CampaignVehicle.state == ReportState.FAILED.value)
            .group_by(CampaignVehicle.reason)
        )
    }
    published = session.scalar(
        select(func.count()).where(in_campaign, CampaignVehicle.notice_published_at.is_not(None))
    )
    return Progress(
        campaign_id=campaign.id,
        recall_number=recall.campaign_number,
        population=campaign.population,
        counts=counts,
        failures_by_reason=failures,
        notices_published=published or 0,
        done=sum(counts[s] for s in TERMINAL) == campaign.population,
    )
