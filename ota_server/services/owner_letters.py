"""Owner letters: the first notification and follow-ups mailed for a recall, kept in the owner-notification log.

``vins`` "all" is every car of the recall: its campaign's frozen population once launched,
otherwise the cars its population resolves to now. A named VIN outside that set is refused
(422 naming it): a letter is logged only for a car the recall affects.
"""

from __future__ import annotations

from datetime import UTC, datetime, time

from sqlalchemy import select
from sqlalchemy.orm import Session

from ota_server.db.models import CampaignVehicle, Recall
from ota_server.errors import InvalidInput, NotFound
from ota_server.schemas import OwnerLetterCreate
from ota_server.services import owner_notifications
from ota_server.services import population as populations
from ota_server.services.campaigns import remedy_campaign
from ota_server.services.owner_notifications import Entry


def record(session: Session, recall_id: int, body: OwnerLetterCreate, recorded_by: str, now: datetime) -> int:
    """Log one letter per car (kind letter, detail first|follow_up, dated ``sent_on``); commits; returns how many."""
    recall = session.get(Recall, recall_id)
    if recall is None:
        raise NotFound(f"no recall {recall_id}")
    campaign = remedy_campaign(session, recall_id)
    if campaign is not None:
        affected = set(session.scalars(select(CampaignVehicle.vin).where(CampaignVehicle.campaign_id == campaign.id)))
    else:
        affected = {m.vin for m in populations.of_recall(session, recall)}
    vins = sorted(affected) if body.vins == "all" else list(dict.fromkeys(body.vins))
    outside = [v for v in vins if v not in affected]
    if outside:
        raise InvalidInput(f"recall {recall.campaign_number} does not affect {', '.join(outside[:5])}")
    if not vins:
        raise InvalidInput(f"recall {recall.campaign_number} affects no car yet: no letter to record")
    at = datetime.combine(body.sent_on, time(), tzinfo=UTC)
    entries = [Entry(v, "letter", body.channel, body.text, at, body.letter) for v in vins]
    count = owner_notifications.record_many(
        session,
        entries,
        campaign_id=campaign.id if campaign else None,
        recall_id=recall_id,
        recorded_by=recorded_by,
        now=now,
    )
    session.commit()
    return count
