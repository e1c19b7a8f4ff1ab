"""Two-person launch of safety recalls: one person requests, a different person approves.

The approval only stages its own row; :func:`ota_server.services.campaigns.launch`
commits it together with the campaign (and the audit entry), so a launch is never
stored without its approval, nor an approval without its launch.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ota_server.db.models import Campaign, LaunchRequest, Recall
from ota_server.errors import Conflict, Forbidden, NotFound
from ota_server.roles import Actor
from ota_server.schemas import LaunchRequestPublic

AWAITING = "awaiting_approval"
APPROVED = "approved"


def _recall(session: Session, recall_id: int) -> Recall:
    recall = session.get(Recall, recall_id)
    if recall is None:
        raise NotFound(f"no recall {recall_id}")
    return recall


def public(request: LaunchRequest) -> LaunchRequestPublic:
    return LaunchRequestPublic(
        recall_id=request.recall_id,
        state=APPROVED if request.approved_by else AWAITING,
        requested_by=request.requested_by,
        requested_at=request.requested_at,
        approved_by=request.approved_by,
        approved_at=request.approved_at,
    )


def for_recall(session: Session, recall_id: int) -> LaunchRequest | None:
    return session.scalar(select(LaunchRequest).where(LaunchRequest.recall_id == recall_id))


def needs_approval(session: Session, recall_id: int) -> bool:
    return _recall(session, recall_id).safety_recall


def request_launch(session: Session, recall_id: int, requester: Actor, now: datetime) -> LaunchRequestPublic:
    """Record that ``requester`` wants this safety recall launched (idempotent while it waits)."""
    recall = _recall(session, recall_id)
    if (
        session.scalar(select(Campaign.id).where(Campaign.recall_id == recall_id, Campaign.kind == "remedy"))
        is not None
    ):
        raise Conflict(f"recall {recall.campaign_number} is already launched")
    existing = for_recall(session, recall_id)
    if existing is not None:
        return public(existing)
    request = LaunchRequest(recall_id=recall_id, requested_by=requester.name, requested_at=now)
    session.add(request)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"a launch of recall {recall.campaign_number} was requested concurrently; retry") from exc
    return public(request)


def stage_approval(session: Session, recall_id: int, approver: Actor, now: datetime) -> LaunchRequest:
    """Mark the request approved in the session (not committed: the launch commits it)."""
    recall = _recall(session, recall_id)
    request = for_recall(session, recall_id)
    if request is None:
        raise NotFound(f"no launch request for recall {recall.campaign_number}; an operator must request it first")
    if request.approved_by is not None:
        raise Conflict(f"recall {recall.campaign_number} was already approved by {request.approved_by}")
    if request.requested_by == approver.name:
        raise Forbidden(
            f"{approver.name} requested the launch of safety recall {recall.campaign_number}; "
            "a different person must approve it"
        )
    request.approved_by = approver.name
    request.approved_at = now
    return request
