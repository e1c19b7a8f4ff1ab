"""Two-person launch of safety recalls: one person requests, a different person approves.

"Different" is about persons, not token names: names are compared normalised
(:func:`ota_server.roles.person_key`), and neither person may have created the
other's token, directly or down a chain of tokens (see :func:`_same_side`).

The approval only stages its own row; :func:`ota_server.services.campaigns.launch`
commits it together with the campaign (and the audit entry), so a launch is never
stored without its approval, nor an approval without its launch.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from ota_server.db.models import ApiToken, LaunchRequest, Recall
from ota_server.errors import Conflict, Forbidden, NotFound
from ota_server.roles import Actor, person_key
from ota_server.schemas import LaunchRequestPublic
from ota_server.services import audit, campaigns, tokens

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
    """Record that ``requester`` wants this safety recall launched (idempotent while it waits).

    Refused as the launch itself would be now (launched already, release not published,
    no car matches). Concurrent identical requests all get the one request stored.
    """
    recall = _recall(session, recall_id)
    campaigns.launchable(session, recall)
    if _creator_name(session, requester.token_id) == tokens.BOOTSTRAP_CREATOR:
        raise Forbidden(
            f"{requester.name} holds the bootstrap admin token, which created every other person's token, so no "
            "one could approve its request: a person with their own operator token requests the launch "
            "(ota tokens create NAME --role operator)"
        )
    existing = for_recall(session, recall_id)
    if existing is not None:
        return public(existing)
    request = LaunchRequest(
        recall_id=recall_id, requested_by=requester.name, requested_by_token_id=requester.token_id, requested_at=now
    )
    session.add(request)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # a concurrent request was stored first: it is the answer
        existing = for_recall(session, recall_id)
        if existing is None:
            raise
        return public(existing)
    return public(request)


def _creator_name(session: Session, token_id: int | None) -> str | None:
    """Who created token ``token_id`` (a person's name, or e.g. the server's first start)."""
    if token_id is None:
        return None
    return session.scalar(select(ApiToken.created_by).where(ApiToken.id == token_id))


def creators(session: Session, person: str) -> set[str]:
    """Every person above ``person``: who created a token it holds, who created theirs, and so on."""
    creator = aliased(ApiToken)
    found: set[str] = set()
    frontier = {person}
    while frontier:
        rows = session.scalars(
            select(creator.person)
            .join(ApiToken, ApiToken.created_by_token_id == creator.id)
            .where(ApiToken.person.in_(sorted(frontier)))
        )
        frontier = set(rows) - found
        found |= frontier
    return found


def _same_side(session: Session, requester_name: str, approver_name: str) -> str | None:
    """Why the approver cannot count as a second person to the requester, or None if it can.

    One person under two spellings is one person; and a person who created (directly or
    through people they created) the other's token could be acting through it, whichever
    side they are on. Two people created by the same admin are two people.
    """
    requester, approver = person_key(requester_name), person_key(approver_name)
    if requester == approver:
        return "is the same person"
    if requester in creators(session, approver):
        return f"holds a token created by {requester_name} (or by someone {requester_name} created)"
    if approver in creators(session, requester):
        return f"created {requester_name}'s token (or its creator's)"
    return None


def stage_approval(session: Session, recall_id: int, approver: Actor, now: datetime) -> LaunchRequest:
    """Mark the request approved in the session (not committed: the launch commits it)."""
    recall = _recall(session, recall_id)
    if (refusal := campaigns.already_launched(session, recall)) is not None:
        raise refusal  # whichever way it was launched (a non-safety recall has no request)
    request = for_recall(session, recall_id)
    if request is None:
        raise NotFound(f"no launch request for recall {recall.campaign_number}; an operator must request it first")
    if request.approved_by is not None:
        raise Conflict(f"recall {recall.campaign_number} was already approved by {request.approved_by}")
    audit.note(
        session,
        requested_by=request.requested_by,
        requester_token_created_by=_creator_name(session, request.requested_by_token_id),
        approved_by=approver.name,
        approver_token_created_by=_creator_name(session, approver.token_id),
    )
    problem = _same_side(session, request.requested_by, approver.name)
    if problem is not None:
        raise Forbidden(
            f"{request.requested_by} requested the launch of safety recall {recall.campaign_number} and "
            f"{approver.name} {problem}; a different person must approve it"
        )
    request.approved_by = approver.name
    request.approved_at = now
    return request
