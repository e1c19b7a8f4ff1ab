"""Campaign views and progress."""

from __future__ import annotations

from fastapi import APIRouter

from ota_server.api.auth import needs_read
from ota_server.api.deps import Id, SessionDep
from ota_server.schemas import CampaignPublic, Progress
from ota_server.services import campaigns, progress

router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"], dependencies=[needs_read])


@router.get("/{campaign_id}")
def get_campaign(campaign_id: Id, session: SessionDep) -> CampaignPublic:
    return campaigns.get(session, campaign_id)


@router.get("/{campaign_id}/progress")
def get_progress(campaign_id: Id, session: SessionDep) -> Progress:
    return progress.progress(session, campaign_id)
