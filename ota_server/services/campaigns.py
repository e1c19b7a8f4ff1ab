"""Launching a recall: freeze its population, sign each car's Director metadata, prepare the notices.

Everything is written in one transaction; notices are built only from what was
committed, and publishing them is the caller's (asynchronous) business.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firmware_bundles.messages import CampaignNotice
from ota_server.db.models import Campaign, CampaignVehicle, Recall, Release
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.schemas import CampaignPublic, Population
from ota_server.services import population as populations
from ota_server.signing.director import Director
from ota_server.signing.image_repo import target_for

PENDING = "pending"


def _recall(session: Session, recall_id: int) -> Recall:
    recall = session.get(Recall, recall_id)
    if recall is None:
        raise NotFound(f"no recall {recall_id}")
    return recall


def notice(recall: Recall, campaign: Campaign, vin: str, nonce: str, repo_url: str) -> CampaignNotice:
    return CampaignNotice(
        campaign_id=campaign.id,
        vin=vin,
        nonce=nonce,
        recall_number=recall.campaign_number,
        title=recall.title,
        safety_recall=recall.safety_recall,
        repo_url=repo_url,
        issued_at=campaign.launched_at,
    )


def launch(
    session: Session, director: Director, recall_id: int, *, repo_url: str, now: datetime
) -> tuple[CampaignPublic, list[CampaignNotice]]:
    """Create the campaign for ``recall_id``; raise Conflict if launched, InvalidInput if nobody is affected."""
    recall = _recall(session, recall_id)
    if session.scalar(select(Campaign.id).where(Campaign.recall_id == recall_id)) is not None:
        raise Conflict(f"recall {recall.campaign_number} is already launched")
    release = session.get(Release, recall.release_id)
    assert release is not None  # foreign key
    members = populations.resolve(session, Population.model_validate(recall.population), release)
    if not members:
        raise InvalidInput(f"recall {recall.campaign_number} matches no vehicle; nothing to launch")
    campaign = Campaign(recall_id=recall.id, release_id=release.id, population=len(members), launched_at=now)
    session.add(campaign)
    try:
        session.flush()
        nonces = {m.vin: secrets.token_urlsafe(24) for m in members}
        rows = [
            {"campaign_id": campaign.id, "vin": vin, "nonce": nonce, "state": PENDING, "attempt": 0, "updated_at": now}
            for vin, nonce in nonces.items()
        ]
        session.execute(insert(CampaignVehicle), rows)
        image = target_for(release)
        director.assign(session, {m.vin: dict.fromkeys(m.ecu_serials, image) for m in members}, now)
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"recall {recall.campaign_number} is already launched (concurrent launch)") from exc
    notices = [notice(recall, campaign, vin, nonce, repo_url) for vin, nonce in nonces.items()]
    return CampaignPublic.model_validate(campaign), notices


def get(session: Session, campaign_id: int) -> CampaignPublic:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    return CampaignPublic.model_validate(campaign)


def unpublished_notices(session: Session, repo_url: str) -> list[CampaignNotice]:
    """Notices launched but never confirmed published (e.g. the server stopped mid-way)."""
    rows = session.execute(
        select(CampaignVehicle.vin, CampaignVehicle.nonce, Campaign, Recall)
        .join(Campaign, Campaign.id == CampaignVehicle.campaign_id)
        .join(Recall, Recall.id == Campaign.recall_id)
        .where(CampaignVehicle.notice_published_at.is_(None))
        .order_by(CampaignVehicle.campaign_id)
    ).all()
    return [notice(recall, campaign, vin, nonce, repo_url) for vin, nonce, campaign, recall in rows]


def mark_published(session: Session, published: Sequence[tuple[int, str]], now: datetime) -> None:
    """Record that the broker accepted these (campaign_id, vin) notices."""
    by_campaign: dict[int, list[str]] = {}
    for campaign_id, vin in published:
        by_campaign.setdefault(campaign_id, []).append(vin)
    for campaign_id, vins in by_campaign.items():
        for start in range(0, len(vins), 500):
            session.query(CampaignVehicle).filter(
                CampaignVehicle.campaign_id == campaign_id, CampaignVehicle.vin.in_(vins[start : start + 500])
            ).update({CampaignVehicle.notice_published_at: now}, synchronize_session=False)
    session.commit()
