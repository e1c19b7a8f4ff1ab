"""Filing recalls: the regulator-facing record plus the population it covers."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ota_server.db.models import Campaign, Recall, Release
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.schemas import Population, RecallCreate, RecallPublic
from ota_server.services import approvals
from ota_server.services import population as populations

CAMPAIGN_NUMBER = re.compile(r"^\d{2}[A-Z]-\d{3,6}$")


def _public(session: Session, recall: Recall, campaign: Campaign | None) -> RecallPublic:
    """``affected_count`` is a live preview until launch, then the frozen population."""
    population = Population.model_validate(recall.population)
    if campaign is not None:
        affected = campaign.population
    else:
        release = session.get(Release, recall.release_id)
        assert release is not None  # foreign key
        affected = len(populations.resolve(session, population, release))
    return RecallPublic(
        id=recall.id,
        campaign_number=recall.campaign_number,
        manufacturer_number=recall.manufacturer_number,
        title=recall.title,
        defect=recall.defect,
        safety_risk=recall.safety_risk,
        remedy=recall.remedy,
        release_id=recall.release_id,
        population=population,
        affected_count=affected,
        campaign_id=campaign.id if campaign else None,
        created_at=recall.created_at,
        safety_recall=recall.safety_recall,
        launch_request=approvals.public(request) if (request := approvals.for_recall(session, recall.id)) else None,
    )


def create(session: Session, body: RecallCreate, now: datetime) -> RecallPublic:
    number = body.campaign_number.strip().upper()
    if not CAMPAIGN_NUMBER.match(number):
        raise InvalidInput(
            f"campaign_number {body.campaign_number!r} must look like 24V-123 (YY, letter, dash, 3-6 digits)"
        )
    if session.get(Release, body.release_id) is None:
        raise InvalidInput(f"release {body.release_id} does not exist")
    if session.scalar(select(Recall.id).where(Recall.campaign_number == number)) is not None:
        raise Conflict(f"recall {number} already exists")
    population = populations.normalised(body.population)
    recall = Recall(
        campaign_number=number,
        manufacturer_number=body.manufacturer_number,
        title=body.title,
        defect=body.defect,
        safety_risk=body.safety_risk,
        remedy=body.remedy,
        release_id=body.release_id,
        population=population.model_dump(mode="json", exclude_none=True),
        created_at=now,
        safety_recall=body.safety_recall,
    )
    session.add(recall)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"recall {number} already exists") from exc
    return _public(session, recall, None)


def _campaign(session: Session, recall_id: int) -> Campaign | None:
    return session.scalar(select(Campaign).where(Campaign.recall_id == recall_id))


def get(session: Session, recall_id: int) -> RecallPublic:
    recall = session.get(Recall, recall_id)
    if recall is None:
        raise NotFound(f"no recall {recall_id}")
    return _public(session, recall, _campaign(session, recall_id))


def list_all(session: Session) -> list[RecallPublic]:
    recalls = session.scalars(select(Recall).order_by(Recall.id)).all()
    return [_public(session, r, _campaign(session, r.id)) for r in recalls]
